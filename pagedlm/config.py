"""Engine configuration: a tree of frozen dataclasses, built in one place (EngineArgs)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_DTYPES = ("auto", "float32", "float16", "bfloat16", "half", "float", "bf16", "fp16", "fp32")


class ConfigError(ValueError):
    """A setting the user chose cannot work; the message says what to change."""


@dataclass(frozen=True)
class ModelConfig:
    model: str
    tokenizer: str
    hf_config: Any = field(repr=False)
    dtype: str  # "float32" | "float16" | "bfloat16"
    max_model_len: int
    served_model_name: str
    load_format: str = "auto"
    seed: int = 0
    chat_template: str | None = None
    # Sampling defaults from generation_config.json (SamplingParams field -> value); see
    # pagedlm/models/generation_config.py. Request fields override them.
    generation_defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size

    @property
    def architectures(self) -> list[str]:
        return list(getattr(self.hf_config, "architectures", None) or [])

    @property
    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.dtype]


@dataclass(frozen=True)
class CacheConfig:
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    num_gpu_blocks_override: int | None = None
    cpu_kv_cache_bytes: int | None = None  # KV budget on CPU; default derived from free memory


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 2048
    # Schedule step N+1 while the device runs step N (its sampled ids are fed back on the
    # device). Hides the host's per-step work; a finished request costs one extra step.
    async_scheduling: bool = False


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1


@dataclass(frozen=True)
class DeviceConfig:
    device: str = "cpu"  # "cpu" | "cuda"
    enforce_eager: bool = False


@dataclass(frozen=True)
class StructuredOutputsConfig:
    backend: str = "xgrammar"
    # Constraints apply after this parser's reasoning block ends (qwen3 | deepseek_r1).
    reasoning_parser: str | None = None


@dataclass(frozen=True)
class EngineConfig:
    model_config: ModelConfig
    cache_config: CacheConfig
    scheduler_config: SchedulerConfig
    parallel_config: ParallelConfig
    device_config: DeviceConfig
    structured_outputs_config: StructuredOutputsConfig = field(default_factory=StructuredOutputsConfig)


def attention_shape(hf_config: Any) -> tuple[int, int, int]:
    """(num_heads, num_kv_heads, head_dim) of a HF config; head_dim and the KV head count
    are optional there (defaulting to hidden_size / heads and to no GQA)."""
    num_heads = hf_config.num_attention_heads
    num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    return num_heads, num_kv_heads, head_dim


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, hf_config: Any, device: str) -> str:
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    aliases = {"half": "float16", "fp16": "float16", "float": "float32", "fp32": "float32", "bf16": "bfloat16"}
    dtype = aliases.get(dtype, dtype)
    if dtype != "auto":
        return dtype
    if device == "cpu":
        return "float32"
    cfg = str(getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None) or "bfloat16")
    cfg = cfg.replace("torch.", "")
    return "bfloat16" if cfg == "float32" else cfg if cfg in ("float16", "bfloat16") else "bfloat16"


def load_hf_config(model: str) -> Any:
    from transformers import AutoConfig

    path = Path(model)
    if not path.is_dir():
        raise ConfigError(f"model {model!r} is not a local checkpoint directory (config.json, weights, tokenizer)")
    if not (path / "config.json").exists():
        raise ConfigError(f"model directory {model!r} has no config.json")
    return AutoConfig.from_pretrained(model)


def derive_max_model_len(hf_config: Any, requested: int | None) -> int:
    limit = getattr(hf_config, "max_position_embeddings", None) or 2048
    if requested is None:
        return int(limit)
    if requested < 1:
        raise ConfigError(f"max_model_len must be positive, got {requested}")
    return int(requested)


def read_chat_template(arg: str | None) -> str | None:
    """--chat-template accepts a file path or the template text itself."""
    if arg is None:
        return None
    if os.path.exists(arg):
        return Path(arg).read_text()
    if "{" not in arg:
        raise ConfigError(f"chat template {arg!r} is neither a file nor a Jinja template")
    return arg


def dump_config(config: EngineConfig) -> str:
    m, c, s = config.model_config, config.cache_config, config.scheduler_config
    return json.dumps(
        {
            "model": m.model, "dtype": m.dtype, "max_model_len": m.max_model_len, "block_size": c.block_size,
            "enable_prefix_caching": c.enable_prefix_caching, "max_num_seqs": s.max_num_seqs,
            "max_num_batched_tokens": s.max_num_batched_tokens, "device": config.device_config.device,
        }
    )
