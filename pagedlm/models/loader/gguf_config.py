"""What a GGUF's HF config needs beyond transformers' metadata mapping, read as llama.cpp reads it.

transformers maps the GGUF metadata keys it knows to a HF config and leaves the rest at the
config class's defaults. For some architectures that is not the model llama.cpp runs from the
same file (llama.cpp is the format's reference): qwen3 loses ``attention.key_length``,
gemma2 and gemma3 get a query scale that only fits head_dim 256 (and gemma2 the class's
soft-caps, gemma3 loses its RoPE scaling), and qwen2moe / qwen3moe lose their experts' widths. The fixes
here are per architecture (one function each), applied once when the sidecar config is written.
"""

from __future__ import annotations

from typing import Any, Callable

from pagedlm.config import ConfigError


def field_value(reader: Any, key: str) -> Any:
    """A metadata value (str, number, or list for arrays); None when the key is absent."""
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def fix_head_dim(reader: Any, config: Any) -> None:
    """transformers' GGUF mapping skips ``attention.key_length`` for some architectures
    (qwen3), whose head_dim is not hidden_size / heads; the Q projection's rows say it."""
    q = next((t for t in reader.tensors if t.name == "blk.0.attn_q.weight"), None)
    if q is None or len(q.shape) != 2:
        return
    config.head_dim = int(q.shape[1]) // config.num_attention_heads  # ggml shape: [in, out]


# llama.cpp's Gemma 3: every 6th layer global, local RoPE base 10000 (llama-model.cpp, LLM_ARCH_GEMMA3)
_GEMMA3_SWA_PATTERN = 6
_GEMMA3_LOCAL_ROPE_BASE = 10000.0
_GEMMA3_27B_LAYERS = 62


def _gemma3_layer_types(reader: Any, num_layers: int, window: int | None) -> list[str]:
    if not window:
        return ["full_attention"] * num_layers
    pattern = field_value(reader, "gemma3.attention.sliding_window_pattern")
    if isinstance(pattern, list):  # newer writers: one bool per layer, True = sliding
        return ["sliding_attention" if p else "full_attention" for p in pattern]
    period = int(pattern) if pattern else _GEMMA3_SWA_PATTERN
    return ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(num_layers)]


def _gemma3_global_rope(reader: Any, theta: float) -> dict[str, Any]:
    scaling = field_value(reader, "gemma3.rope.scaling.type")
    factor = field_value(reader, "gemma3.rope.scaling.factor")
    if scaling in (None, "none") or (scaling == "linear" and not factor):
        return {"rope_type": "default", "rope_theta": theta}
    if scaling != "linear":
        raise ConfigError(f"gemma3 GGUF with rope.scaling.type {scaling!r} is not supported (Gemma 3 uses 'linear')")
    return {"rope_type": "linear", "factor": float(factor), "rope_theta": theta}


def fix_gemma3(reader: Any, config: Any) -> None:
    """llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(hidden / heads) for the 27B's 62
    layers), applies ``rope.scaling`` (linear, converted from the HF config) to global layers
    only, and fixes the local RoPE base and the sliding pattern, which the file does not store."""
    theta = field_value(reader, "gemma3.rope.freq_base")
    theta = float(theta) if theta is not None else config.rope_parameters["full_attention"]["rope_theta"]
    local = field_value(reader, "gemma3.rope.freq_base_swa")
    config.rope_parameters = {
        "full_attention": _gemma3_global_rope(reader, theta),
        "sliding_attention": {"rope_type": "default",
                              "rope_theta": float(local) if local is not None else _GEMMA3_LOCAL_ROPE_BASE},
    }
    if config.num_hidden_layers == _GEMMA3_27B_LAYERS:
        config.query_pre_attn_scalar = config.hidden_size // config.num_attention_heads
    else:
        config.query_pre_attn_scalar = config.head_dim
    config.layer_types = _gemma3_layer_types(reader, config.num_hidden_layers, config.sliding_window)


# llama.cpp's Gemma 2: every other layer sliding (from the first), and the 27B's 46 layers
# scale queries by 1/sqrt(hidden / heads) (llama-model.cpp, LLM_ARCH_GEMMA2)
_GEMMA2_27B_LAYERS = 46


def fix_gemma2(reader: Any, config: Any) -> None:
    """The soft-caps the file states (transformers keeps the class defaults), the query scale
    (1/sqrt(head_dim); hidden / heads for the 27B) and the alternating sliding layers."""
    for attr in ("attn_logit_softcapping", "final_logit_softcapping"):
        value = field_value(reader, f"gemma2.{attr}")
        if value is not None:
            setattr(config, attr, float(value))
    if config.num_hidden_layers == _GEMMA2_27B_LAYERS:
        config.query_pre_attn_scalar = config.hidden_size // config.num_attention_heads
    else:
        config.query_pre_attn_scalar = config.head_dim
    config.layer_types = ["sliding_attention" if i % 2 == 0 and config.sliding_window else "full_attention"
                          for i in range(config.num_hidden_layers)]


def _tensor_dim(reader: Any, name: str, dim: int) -> int | None:
    tensor = next((t for t in reader.tensors if t.name == name), None)
    return int(tensor.shape[dim]) if tensor is not None else None


def _fix_qwen_moe(reader: Any, config: Any, arch: str, norm_default: bool) -> None:
    """transformers' mapping leaves the experts' widths at the config class defaults; llama.cpp
    reads ``expert_feed_forward_length`` and ``expert_shared_feed_forward_length`` (else the
    tensors' shapes: ggml's [hidden, width, experts]) and renormalises the chosen experts'
    weights per architecture (qwen3moe yes, qwen2moe no) unless ``expert_weights_norm`` says."""
    width = field_value(reader, f"{arch}.expert_feed_forward_length")
    width = width if width is not None else _tensor_dim(reader, "blk.0.ffn_gate_exps.weight", 1)
    if width is not None:
        config.moe_intermediate_size = int(width)
    if hasattr(config, "shared_expert_intermediate_size"):
        shared = field_value(reader, f"{arch}.expert_shared_feed_forward_length")
        shared = shared if shared is not None else _tensor_dim(reader, "blk.0.ffn_gate_shexp.weight", 1)
        config.shared_expert_intermediate_size = int(shared) if shared is not None else 0
    norm = field_value(reader, f"{arch}.expert_weights_norm")
    config.norm_topk_prob = bool(norm) if norm is not None else norm_default


def fix_qwen2moe(reader: Any, config: Any) -> None:
    _fix_qwen_moe(reader, config, "qwen2moe", norm_default=False)


def fix_qwen3moe(reader: Any, config: Any) -> None:
    _fix_qwen_moe(reader, config, "qwen3moe", norm_default=True)


_ARCH_FIXES: dict[str, Callable[[Any, Any], None]] = {"gemma2": fix_gemma2, "gemma3": fix_gemma3,
                                                       "qwen2moe": fix_qwen2moe, "qwen3moe": fix_qwen3moe}


def fix_token_ids(reader: Any, config: Any) -> None:
    """Special token ids from the tokenizer metadata (llama.cpp's ``tokenizer.ggml.*_token_id``);
    a config class default the file did not set that lies outside the vocabulary (Phi-3's pad id
    32000 in a smaller vocabulary) is dropped."""
    for attr, key in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        value = field_value(reader, f"tokenizer.ggml.{key}_token_id")
        if value is not None:
            setattr(config, attr, int(value))
        elif isinstance(getattr(config, attr, None), int) and not 0 <= getattr(config, attr) < config.vocab_size:
            setattr(config, attr, None)


def fix_config(reader: Any, arch: str, config: Any) -> None:
    fix_head_dim(reader, config)
    fix_token_ids(reader, config)
    if arch in _ARCH_FIXES:
        _ARCH_FIXES[arch](reader, config)
