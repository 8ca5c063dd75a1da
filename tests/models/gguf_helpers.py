"""Write a tiny HF llama checkpoint as a GGUF file the way llama.cpp's converter does (its
tensor names, the rotary permutation of Q/K, quantized tensor types), with the ``gguf``
package's writer and quantizers. Used by the GGUF loader tests; nothing here parses GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

# HF parameter suffix (per layer) -> llama.cpp tensor name suffix
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    # qwen2: q/k/v biases; qwen3: per-head RMSNorm of q and k
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}


def permute_for_llama_cpp(weights: np.ndarray, n_head: int) -> np.ndarray:
    """What convert_hf_to_gguf.py applies to Q and K of llama models (interleaved rotary halves)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(state: dict[str, np.ndarray], config, permute: bool = True) -> dict[str, np.ndarray]:
    out = {"token_embd.weight": state["model.embed_tokens.weight"], "output_norm.weight": state["model.norm.weight"]}
    if "lm_head.weight" in state and not config.tie_word_embeddings:
        out["output.weight"] = state["lm_head.weight"]
    for i in range(config.num_hidden_layers):
        for hf, cpp in _LAYER_NAMES.items():
            w = state.get(f"model.layers.{i}.{hf}")
            if w is None:
                continue
            # llama.cpp permutes Q/K (weights and biases) of llama models only
            if permute and cpp.startswith("attn_q."):
                w = permute_for_llama_cpp(w, config.num_attention_heads)
            elif permute and cpp.startswith("attn_k."):
                w = permute_for_llama_cpp(w, config.num_key_value_heads)
            out[f"blk.{i}.{cpp}"] = w
    return out


def k_quant_bytes(rows: int, cols: int, type_name: str, seed: int) -> np.ndarray:
    """Random K-quant blocks with sane scales (gguf-py can dequantize but not quantize K types):
    random quant bytes, then every f16 super-block scale set to a small value so the values
    stay finite and of weight-like size."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block_elems, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(rows * cols // block_elems, block_bytes), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.002).tobytes(), dtype=np.uint8)
    # Byte offsets of the f16 scale(s) in a block: Q4_K/Q5_K start with d, dmin; Q6_K ends with d.
    offsets = {"Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [block_bytes - 2]}[type_name]
    for off in offsets:
        blocks[:, off:off + 2] = scale
    return blocks.reshape(rows, cols // block_elems * block_bytes)


def write_llama_gguf(checkpoint_dir: str | Path, out: str | Path,
                     tensor_type: Callable[[str, np.ndarray], str] = lambda name, w: "F32",
                     arch: str = "llama") -> Path:
    """``tensor_type(gguf_name, weights) -> type name`` picks each tensor's GGUF type."""
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(checkpoint_dir))
    state = {}
    for f in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        state.update({k: v.to(torch.float32).numpy() for k, v in load_file(str(f)).items()})
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    for i, (name, w) in enumerate(gguf_tensors(state, config, permute=arch == "llama").items()):
        _add_tensor(writer, name, np.ascontiguousarray(w, dtype=np.float32), tensor_type(name, w), seed=i)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def _add_tensor(writer, name: str, w: np.ndarray, type_name: str, seed: int) -> None:
    import gguf
    from gguf import GGMLQuantizationType

    qtype = GGMLQuantizationType[type_name]
    if type_name == "F32":
        writer.add_tensor(name, w)
    elif type_name in ("Q4_K", "Q5_K", "Q6_K"):
        writer.add_tensor(name, k_quant_bytes(*w.shape, type_name, seed), raw_dtype=qtype)
    elif type_name == "I8":
        writer.add_tensor(name, np.clip(w * 100, -127, 127).astype(np.int8), raw_dtype=qtype)
    else:
        writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
