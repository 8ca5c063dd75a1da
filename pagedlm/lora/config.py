"""LoRAConfig: the engine's LoRA settings, built (and checked) from EngineArgs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagedlm.config import ConfigError

# Ranks the kernels' tiles are laid out for (vLLM's list).
SUPPORTED_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class LoRAConfig:
    max_loras: int = 1  # adapters resident on the device, the most one step may mix
    max_lora_rank: int = 16
    max_cpu_loras: int = 1  # adapters kept loaded in host memory (an LRU), >= max_loras


def build_lora_config(enable_lora: bool, max_loras: int, max_lora_rank: int, max_cpu_loras: int | None,
                      architectures: list[str], pipeline_parallel_size: int, runner: str,
                      model_impl: str = "auto") -> LoRAConfig | None:
    """None when LoRA is off; a LoRA option set without --enable-lora is refused, not ignored."""
    if not enable_lora:
        if (max_loras, max_lora_rank, max_cpu_loras) != (1, 16, None):
            raise ConfigError("--max-loras / --max-lora-rank / --max-cpu-loras need --enable-lora "
                              "(LLM(enable_lora=True))")
        return None
    if max_loras < 1:
        raise ConfigError(f"max_loras must be at least 1, got {max_loras}")
    if max_lora_rank not in SUPPORTED_RANKS:
        raise ConfigError(f"max_lora_rank must be one of {list(SUPPORTED_RANKS)}, got {max_lora_rank}")
    cpu = max_loras if max_cpu_loras is None else max_cpu_loras
    if cpu < max_loras:
        raise ConfigError(f"max_cpu_loras ({cpu}) must be at least max_loras ({max_loras})")
    _check_model(architectures, pipeline_parallel_size, runner, model_impl)
    return LoRAConfig(max_loras, max_lora_rank, cpu)


def _check_model(architectures: list[str], pipeline_parallel_size: int, runner: str, model_impl: str = "auto") -> None:
    from pagedlm.models.registry import resolve_model_class

    if runner == "pooling":
        raise ConfigError("--enable-lora is not supported for pooling (embedding) models")
    if pipeline_parallel_size > 1:
        raise ConfigError("--enable-lora is not supported with pipeline parallelism (-pp > 1) yet")
    cls: Any = resolve_model_class(architectures, model_impl)
    if not getattr(cls, "supports_lora", False):
        raise ConfigError(f"LoRA adapters are supported for the Llama family (Llama, Mistral, Qwen2, Qwen3); "
                          f"this model is {architectures}")
