"""Engine configuration: a tree of frozen dataclasses, built in one place (EngineArgs)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# vLLM's config objects scripts pass to LLM(...) in place of a dict, under vLLM's import path
# (``from vllm.config import CompilationConfig``); pagedlm.config_options says how they are read.
from pagedlm.config_options import (  # noqa: F401
    CompilationConfig,
    CompilationMode,
    CUDAGraphMode,
    KVTransferConfig,
    PoolerConfig,
)

if TYPE_CHECKING:
    from pagedlm.lora.config import LoRAConfig
    from pagedlm.pooling_config import PoolerConfig as ResolvedPoolerConfig

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
    runner: str = "generate"  # "generate" | "pooling" (resolved from "auto")
    pooler_config: "ResolvedPoolerConfig | None" = None  # set when runner == "pooling"
    trust_remote_code: bool = False
    # "auto": the fast tokenizer where the checkpoint has one; "slow": the Python one (use_fast=False)
    tokenizer_mode: str = "auto"
    max_logprobs: int = 20
    # What sampled tokens' logprobs carry (vLLM's --logprobs-mode): raw_logprobs, raw_logits,
    # processed_logprobs, processed_logits (pagedlm/sample/logprobs.py LOGPROBS_MODES).
    logprobs_mode: str = "raw_logprobs"
    # vLLM's --skip-tokenizer-init: no tokenizer anywhere; prompts are token ids, outputs carry
    # token ids with empty text.
    skip_tokenizer_init: bool = False
    served_model_names: tuple[str, ...] = ()  # all names clients may use; the first is reported
    # Sampling defaults from generation_config.json (SamplingParams field -> value); see
    # pagedlm/models/generation_config.py. Request fields override them.
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    # The directory whose generation_config.json names the extra EOS ids: the model's, or the
    # one --generation-config names (vLLM reads it there even with 'vllm', which only drops
    # the sampling defaults).
    generation_config_dir: str | None = None
    # Weight quantization (a name in pagedlm.layers.quantization.QUANTIZATION_METHODS), resolved
    # from the checkpoint's quantization_config and --quantization; None: unquantized.
    quantization: str | None = None
    # "auto" | "vllm" / "pagedlm" | "transformers" (pagedlm.models.registry.resolve_model_class)
    model_impl: str = "auto"
    # vLLM's --enable-prompt-embeds: prompts may be given as embeddings (pagedlm/engine/prompt_embeds.py).
    enable_prompt_embeds: bool = False

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
    # KV budget in bytes (CPU and GPU); None: a quarter of free RAM (at most 4 GiB) on CPU,
    # what gpu_memory_utilization leaves on GPU.
    kv_cache_memory_bytes: int | None = None
    # "auto" (the model dtype) | "fp8_e4m3" | "fp8_e5m2"; see pagedlm/attention/kv_cache_dtype.py
    cache_dtype: str = "auto"
    # What a user should change when KV blocks run out (the preemption warning says it).
    memory_hint: str = "raise --gpu-memory-utilization (or --kv-cache-memory-bytes)"
    # fp8 cache: k_scale / v_scale from the first real batch (--calculate-kv-scales)
    calculate_kv_scales: bool = False
    # vLLM's sleep mode: LLM.sleep / wake_up free and restore the weights and the KV cache.
    enable_sleep_mode: bool = False


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int = 2048
    # Schedule step N+1 while the device runs step N (its sampled ids are fed back on the
    # device). Hides the host's per-step work; a finished request costs one extra step.
    async_scheduling: bool = False
    # Off: a prompt is scheduled whole or waits (pooling needs all of a prompt's hidden states in one step).
    enable_chunked_prefill: bool = True
    # Speculative decoding: drafts per request and step, and KV slots the proposer writes
    # past them (allocated with each step's blocks, rolled back with rejected drafts).
    num_spec_tokens: int = 0
    num_lookahead_tokens: int = 0
    spec_disable_by_batch_size: int | None = None  # steps with this many running requests speculate not
    scheduling_policy: str = "fcfs"  # "fcfs" | "priority" (engine/request_queue.py)
    long_prefill_token_threshold: int = 0  # > 0: a request's prompt tokens per step at most this many
    stream_interval: int = 1  # streamed outputs every this many tokens (output_processor; vLLM's)


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str = "uni"  # "uni" | "mp" | "ray", resolved by EngineArgs
    # MoE experts split whole over the tensor-parallel ranks (vLLM's --enable-expert-parallel)
    enable_expert_parallel: bool = False

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


@dataclass(frozen=True)
class DeviceConfig:
    device: str = "cpu"  # "cpu" | "cuda"
    enforce_eager: bool = False
    # Decode batch sizes captured as CUDA graphs (pagedlm.compilation); None: the default list
    # for max_num_seqs, empty: none.
    cuda_graph_sizes: tuple[int, ...] | None = None


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
    speculative_config: Any = None  # pagedlm.spec_decode.config.SpeculativeConfig | None
    lora_config: "LoRAConfig | None" = None  # set with --enable-lora
    log_stats: bool = True  # the periodic speculative-decoding line (off: --disable-log-stats)
    # Custom logits processors (vLLM V1's): "module:Class" names, loaded in each worker
    # (pagedlm.engine.logits_processor_loading, pagedlm.sample.custom_logits); each gets this
    # config as vLLM's ``vllm_config``.
    logits_processors: tuple[str, ...] = ()


# vLLM's name for the engine config, as custom logits processors annotate their first argument.
VllmConfig = EngineConfig


def falcon_kv_heads(hf_config: Any) -> int:
    """Falcon's K/V head count, from its own fields (its configs have no num_key_value_heads):
    ``num_kv_heads`` groups in the new decoder architecture (Falcon-40B / 180B), one head
    with ``multi_query`` (Falcon-7B), else one per query head."""
    num_heads = hf_config.num_attention_heads
    if getattr(hf_config, "new_decoder_architecture", False):
        return getattr(hf_config, "num_kv_heads", None) or num_heads
    return 1 if getattr(hf_config, "multi_query", True) else num_heads


def mla_head_dims(hf_config: Any) -> tuple[int, int, int] | None:
    """(qk_nope_head_dim, qk_rope_head_dim, v_head_dim) of a multi-head latent attention
    config (DeepSeek-V2 / V3: ``kv_lora_rank`` and the per-part head dims); None for others."""
    dims = [getattr(hf_config, name, None) for name in ("qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")]
    if getattr(hf_config, "kv_lora_rank", None) is None or any(d is None for d in dims):
        return None
    return int(dims[0]), int(dims[1]), int(dims[2])


def attention_shape(hf_config: Any) -> tuple[int, int, int]:
    """(num_heads, num_kv_heads, head_dim) of a HF config; head_dim and the KV head count
    are optional there (defaulting to hidden_size / heads and to no GQA).

    Multi-head latent attention (``mla_head_dims``) is cached decompressed: one K and one V
    per query head, both max(qk_nope + qk_rope, v_head_dim) wide (V zero-padded), so the
    shape is the cache's, not the config's ``head_dim`` (which there is qk_rope_head_dim)."""
    num_heads = hf_config.num_attention_heads
    mla = mla_head_dims(hf_config)
    if mla is not None:
        qk_nope, qk_rope, v_head_dim = mla
        return num_heads, num_heads, max(qk_nope + qk_rope, v_head_dim)
    if getattr(hf_config, "model_type", None) == "falcon":
        num_kv_heads = falcon_kv_heads(hf_config)
    else:
        num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    return num_heads, num_kv_heads, head_dim


def resolve_parallel_config(tp: int, pp: int, backend: str | None, device: str,
                            enable_expert_parallel: bool = False) -> ParallelConfig:
    """Check the world shape and pick the executor like vLLM: one rank in process; several
    as processes on this host, or as Ray actors when the world outgrows the host's GPUs."""
    for name, size in (("tensor_parallel_size", tp), ("pipeline_parallel_size", pp)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"{name} must be a positive integer, got {size!r}")
    world = tp * pp
    if backend not in (None, "uni", "mp", "ray"):
        raise ConfigError(f"distributed_executor_backend must be 'mp', 'ray' or 'uni', got {backend!r}")
    if backend is None:
        backend = "uni" if world == 1 else "mp"
        if world > 1 and device == "cuda":
            import torch

            if world > torch.cuda.device_count():
                backend = "ray"
    if backend == "uni" and world > 1:
        raise ConfigError(f"distributed_executor_backend='uni' runs one rank; tensor_parallel_size x "
                          f"pipeline_parallel_size = {world} needs 'mp' or 'ray'")
    if backend == "mp" and device == "cuda":
        import torch

        if world > torch.cuda.device_count():
            raise ConfigError(f"{world} ranks need {world} GPUs on this host, found {torch.cuda.device_count()}; "
                              "use distributed_executor_backend='ray' to span hosts")
    if backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError as e:
            raise ConfigError("distributed_executor_backend='ray' needs Ray: pip install 'pagedlm[ray]'") from e
    return ParallelConfig(tp, pp, backend, bool(enable_expert_parallel))


def verify_parallel_shapes(hf_config: Any, parallel: ParallelConfig) -> None:
    """Refuse, before any worker starts, a model the world shape cannot split evenly."""
    tp, pp = parallel.tensor_parallel_size, parallel.pipeline_parallel_size
    num_heads, num_kv_heads, _ = attention_shape(hf_config)
    if num_heads % tp:
        raise ConfigError(f"num_attention_heads ({num_heads}) must be divisible by tensor_parallel_size ({tp})")
    if num_kv_heads % tp and tp % num_kv_heads:
        raise ConfigError(f"num_key_value_heads ({num_kv_heads}) and tensor_parallel_size ({tp}) must divide "
                          "one another (KV heads are split, or replicated when there are more ranks)")
    intermediate = getattr(hf_config, "intermediate_size", None)
    if intermediate and intermediate % tp:
        raise ConfigError(f"intermediate_size ({intermediate}) must be divisible by tensor_parallel_size ({tp})")
    if hf_config.num_hidden_layers < pp:
        raise ConfigError(f"pipeline_parallel_size ({pp}) exceeds the model's {hf_config.num_hidden_layers} layers")


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was given but CUDA is not available here (no GPU, or a CPU-only torch "
                          f"build: torch {torch.__version__}); use --device cpu or auto")
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def is_large_gpu() -> bool:
    """A GPU of 70 GiB or more other than the A100 (H100, H200, MI300x...): where vLLM's larger
    batch defaults apply (on the A100 they lowered throughput, vLLM's own measurement)."""
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return props.total_memory >= 70 * (1 << 30) and "a100" not in props.name.lower()


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


def load_hf_config(model: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoConfig

    path = Path(model)
    if not path.is_dir():
        raise ConfigError(f"model {model!r} is not a local checkpoint directory (config.json, weights, tokenizer)")
    if not (path / "config.json").exists():
        raise ConfigError(f"model directory {model!r} has no config.json")
    from pagedlm.models.encoder_configs import published_encoder_config
    from pagedlm.models.multimodal import text_only_config

    encoder_config = published_encoder_config(model)  # nomic / gte: written for remote code
    if encoder_config is not None:
        return encoder_config
    try:
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    except ValueError as exc:  # transformers' several-line refusal of a checkpoint's own code
        if trust_remote_code or "trust_remote_code" not in str(exc):
            raise
        raise ConfigError(f"model {model!r} ships its own configuration code; run it with --trust-remote-code "
                          "(trust_remote_code=True) if you trust it") from None
    _read_modelopt_quant_config(config, path)
    return text_only_config(config)


def _read_modelopt_quant_config(config: Any, path: Path) -> None:
    """NVIDIA ModelOpt's older exports keep their quantization in ``hf_quant_config.json``
    beside a config.json without one: read it as ``quant_method: modelopt`` (as vLLM does)."""
    quant_file = path / "hf_quant_config.json"
    if getattr(config, "quantization_config", None) is not None or not quant_file.is_file():
        return
    try:
        data = json.loads(quant_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{quant_file} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("quantization"), dict):
        raise ConfigError(f"{quant_file} has no 'quantization' object (NVIDIA ModelOpt's layout)")
    config.quantization_config = {"quant_method": "modelopt", **data["quantization"]}


def model_sliding_window(hf_config: Any) -> int | None:
    """The sliding window the model's attention uses (the one of its local layers), None when
    it has none in effect (Qwen and SmolLM3 configs carry a window that only
    use_sliding_window turns on)."""
    window = getattr(hf_config, "sliding_window", None)
    if getattr(hf_config, "use_sliding_window", None) is False:
        return None
    if str(getattr(hf_config, "model_type", "")).startswith("qwen") and not getattr(hf_config, "use_sliding_window",
                                                                                      False):
        return None
    return int(window) if window else None


def layer_sliding_window(hf_config: Any, layer: int | None) -> int | None:
    """Layer ``layer``'s sliding window (None: it attends to the whole sequence). A config with
    ``layer_types`` windows only its ``sliding_attention`` layers (Qwen2 / Qwen3 with
    use_sliding_window: the layers from max_window_layers on); otherwise the model's window
    (``model_sliding_window``) applies to every layer, as in Mistral."""
    window = model_sliding_window(hf_config)
    layer_types = getattr(hf_config, "layer_types", None)
    if window is None or layer is None or not layer_types:
        return window
    return window if layer_types[layer] == "sliding_attention" else None


def rope_scaled_context(hf_config: Any, max_position: int) -> int:
    """The context RoPE scaling stretches ``max_position`` to, as vLLM derives it: linear,
    dynamic and yarn scaling multiply it by ``factor`` (yarn from its
    ``original_max_position_embeddings``); llama3 and longrope configs, and Gemma 3's, already
    state the stretched length in ``max_position_embeddings``."""
    params = getattr(hf_config, "rope_scaling", None) or getattr(hf_config, "rope_parameters", None) or {}
    if (not isinstance(params, dict) or any(isinstance(v, dict) for v in params.values())
            or "gemma3" in str(getattr(hf_config, "model_type", ""))):
        return max_position  # per-layer-type RoPE (Gemma 3): no single scaling to apply
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("linear", "dynamic", "yarn"):
        return max_position
    if rope_type == "yarn":
        max_position = int(params.get("original_max_position_embeddings") or max_position)
    return int(max_position * float(params.get("factor") or 1.0))


def derive_max_model_len(hf_config: Any, requested: int | None, allow_long: bool = False,
                         disable_sliding_window: bool = False, position_offset: int = 0) -> int:
    """The model's trained context (stretched by its RoPE scaling, ``rope_scaled_context``)
    unless a length is asked for; beyond that context positions the model never saw give
    garbage, so that needs an explicit opt-in. With ``disable_sliding_window`` (vLLM's) the
    context is capped at the model's sliding window, so every layer attends to the whole
    sequence. ``position_offset``: the first position a model numbers (RoBERTa's padding_idx
    + 1) is that many rows into its position table, so that many fewer tokens fit."""
    limit = rope_scaled_context(hf_config, int(getattr(hf_config, "max_position_embeddings", None) or 2048))
    limit -= position_offset
    window = model_sliding_window(hf_config) if disable_sliding_window else None
    if window is not None:
        if requested is not None and requested > window:
            raise ConfigError(f"max_model_len={requested} is larger than the sliding window ({window} tokens), the "
                              f"most --disable-sliding-window allows; use --max-model-len {window} or less")
        limit = min(limit, window)
    if requested is None:
        return limit
    if requested < 1:
        raise ConfigError(f"max_model_len must be positive, got {requested}")
    if requested > limit and not allow_long:
        raise ConfigError(
            f"max_model_len={requested} is larger than the model's trained context of {limit} tokens "
            "(max_position_embeddings, times its RoPE scaling factor); use --max-model-len {limit} or less, or "
            "pass --allow-long-max-model-len (env PAGEDLM_ALLOW_LONG_MAX_MODEL_LEN=1 or "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1) to accept output that may be wrong beyond it".replace("{limit}", str(limit)))
    return int(requested)


def read_chat_template(arg: str | None) -> str | None:
    """--chat-template accepts a file path or the template text itself."""
    if arg is None:
        return None
    if os.path.exists(arg):
        template = Path(arg).read_text()
    elif "{" not in arg:
        raise ConfigError(f"chat template {arg!r} is neither a file nor a Jinja template")
    else:
        template = arg
    check_chat_template(template)
    return template


def check_chat_template(template: str) -> None:
    """Compile it now (as transformers will, with its Jinja extensions), so a broken
    template stops start-up instead of failing every chat request."""
    import jinja2

    try:
        from transformers.utils.chat_template_utils import _compile_jinja_template as compile_template
    except ImportError:  # a transformers without it: plain sandboxed Jinja
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        compile_template = ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"]).from_string
    try:
        compile_template(template)
    except jinja2.TemplateError as e:
        line = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        raise ConfigError(f"the chat template is not valid Jinja{line}: {e}") from e


def dump_config(config: EngineConfig) -> str:
    m, c, s = config.model_config, config.cache_config, config.scheduler_config
    return json.dumps(
        {
            "model": m.model, "runner": m.runner, "dtype": m.dtype, "max_model_len": m.max_model_len,
            "block_size": c.block_size, "kv_cache_dtype": c.cache_dtype,
            "enable_prefix_caching": c.enable_prefix_caching, "max_num_seqs": s.max_num_seqs,
            "max_num_batched_tokens": s.max_num_batched_tokens, "device": config.device_config.device,
            "tensor_parallel_size": config.parallel_config.tensor_parallel_size,
            "pipeline_parallel_size": config.parallel_config.pipeline_parallel_size,
            "distributed_executor_backend": config.parallel_config.distributed_executor_backend,
        }
    )
