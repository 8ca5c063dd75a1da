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
    # phi3: q / k / v and gate / up fused, as in its HF checkpoints
    "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "mlp.gate_up_proj.weight": "ffn_up.weight",
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
    # Byte offsets of the f16 scale(s) in a block (ggml-common.h's block_q*_K): Q4_K/Q5_K start
    # with d, dmin; Q2_K ends with d, dmin; Q3_K and Q6_K end with d.
    offsets = {"Q4_K": [0, 2], "Q5_K": [0, 2], "Q2_K": [block_bytes - 4, block_bytes - 2],
               "Q3_K": [block_bytes - 2], "Q6_K": [block_bytes - 2]}[type_name]
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
    tensors = gguf_tensors(state, config, permute=arch == "llama")
    if arch in ("qwen2moe", "qwen3moe"):
        tensors.update(_moe_metadata_and_experts(writer, state, config))
    for i, (name, w) in enumerate(tensors.items()):
        _add_tensor(writer, name, np.ascontiguousarray(w, dtype=np.float32), tensor_type(name, w), seed=i)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)


def _moe_metadata_and_experts(writer, state: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """What convert_hf_to_gguf.py's Qwen2MoeModel / Qwen3MoeModel add: the expert metadata, and
    per layer the router (ffn_gate_inp) and the experts stacked into 3-D tensors
    (ffn_{gate,up,down}_exps); Qwen2-MoE's shared expert as ffn_{gate,up,down}_shexp and its
    gate as ffn_gate_inp_shexp."""
    writer.add_expert_count(config.num_experts)
    writer.add_expert_used_count(config.num_experts_per_tok)
    writer.add_expert_feed_forward_length(config.moe_intermediate_size)
    shared = getattr(config, "shared_expert_intermediate_size", None)
    if shared:
        writer.add_expert_shared_feed_forward_length(shared)
    out = {}
    for i in range(config.num_hidden_layers):
        prefix = f"model.layers.{i}.mlp"
        out[f"blk.{i}.ffn_gate_inp.weight"] = state[f"{prefix}.gate.weight"]
        for hf, cpp in (("gate_proj", "ffn_gate_exps"), ("up_proj", "ffn_up_exps"), ("down_proj", "ffn_down_exps")):
            out[f"blk.{i}.{cpp}.weight"] = np.stack([state[f"{prefix}.experts.{e}.{hf}.weight"]
                                                     for e in range(config.num_experts)])
        if shared:
            for hf, cpp in (("gate_proj", "ffn_gate_shexp"), ("up_proj", "ffn_up_shexp"),
                            ("down_proj", "ffn_down_shexp")):
                out[f"blk.{i}.{cpp}.weight"] = state[f"{prefix}.shared_expert.{hf}.weight"]
            out[f"blk.{i}.ffn_gate_inp_shexp.weight"] = state[f"{prefix}.shared_expert_gate.weight"].reshape(-1)
    return out


def _add_tensor(writer, name: str, w: np.ndarray, type_name: str, seed: int) -> None:
    import gguf
    from gguf import GGMLQuantizationType

    qtype = GGMLQuantizationType[type_name]
    if type_name == "F32":
        writer.add_tensor(name, w)
    elif type_name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        writer.add_tensor(name, k_quant_bytes(*w.shape, type_name, seed), raw_dtype=qtype)
    elif type_name == "I8":
        writer.add_tensor(name, np.clip(w * 100, -127, 127).astype(np.int8), raw_dtype=qtype)
    else:
        writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)


# --- gemma3: what convert_hf_to_gguf.py's Gemma3Model writes -------------------------------

# HF parameter suffix (per layer) -> llama.cpp tensor name suffix (gguf-py's TensorNameMap for
# MODEL_ARCH.GEMMA3). Gemma 3 gets no Q/K permutation.
_GEMMA3_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}

# SentencePiece token types as llama.cpp writes them (tokenizer.ggml.token_type)
_NORMAL, _UNKNOWN, _CONTROL, _BYTE = 1, 2, 3, 6
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
_WORDS = ("the cat sat on mat and dog ran to park paris is capital of france what hello world model user "
          "quick brown fox jumps over lazy answer question engine paged attention token block cache").split()


def gemma_spm_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """A Gemma-shaped SentencePiece vocabulary of exactly ``size`` pieces: pad/eos/bos/unk/mask
    and the turn markers, 256 byte-fallback pieces, single characters, then word prefixes
    ("▁t", "▁th", "▁the") so every longer piece splits into two shorter ones (the file has no
    merges; transformers rebuilds them from the vocabulary, as for real Gemma files)."""
    tokens = list(GEMMA_SPECIALS) + [f"<0x{b:02X}>" for b in range(256)]
    types = [_CONTROL, _CONTROL, _CONTROL, _UNKNOWN, _CONTROL, _CONTROL, _CONTROL] + [_BYTE] * 256
    chars = ["\u2581", *"abcdefghijklmnopqrstuvwxyz", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!'\n"]
    pieces = chars + [f"\u2581{w[:n]}" for w in _WORDS for n in range(1, len(w) + 1)]
    pieces += [f"{a}{b}" for a in "etaoinshr" for b in "etaoinshrdlu"]
    for piece in dict.fromkeys(pieces):
        if len(tokens) == size:
            break
        tokens.append(piece)
        types.append(_NORMAL)
    if len(tokens) != size:
        raise ValueError(f"vocabulary of {size} pieces asked for; only {len(tokens)} made")
    return tokens, [-float(i) for i in range(size)], types


def _add_gemma_tokenizer(writer, vocab_size: int) -> None:
    """tokenizer.* keys as the converter's _set_vocab_sentencepiece + Gemma3Model.set_vocab write them."""
    tokens, scores, types = gemma_spm_vocab(vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(GEMMA_CHAT_TEMPLATE)


def gemma3_tensors(state: dict[str, np.ndarray], config) -> dict[str, np.ndarray]:
    """llama.cpp names; ``+1`` added to every norm weight (Gemma3RMSNorm computes x * (1 + w));
    a multimodal checkpoint's ``language_model.`` prefix dropped and its vision tensors skipped."""
    text = {}
    for name, w in state.items():
        if name.startswith(("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                            "model.multi_modal_projector.")):
            continue
        text[name.replace("language_model.", "").replace("model.model.", "model.")] = w
    out = {"token_embd.weight": text["model.embed_tokens.weight"], "output_norm.weight": text["model.norm.weight"] + 1}
    if "lm_head.weight" in text and not config.tie_word_embeddings:
        out["output.weight"] = text["lm_head.weight"]
    for i in range(config.num_hidden_layers):
        for hf, cpp in _GEMMA3_LAYER_NAMES.items():
            w = text.get(f"model.layers.{i}.{hf}")
            if w is None:  # Gemma 2: no q / k norms
                continue
            out[f"blk.{i}.{cpp}"] = w + 1 if hf.endswith("norm.weight") else w
    return out


def _gemma3_metadata(writer, config) -> None:
    """Gemma3Model.set_gguf_parameters: no sliding-window pattern, local RoPE base or
    query_pre_attn_scalar is written (llama.cpp fixes them: every 6th layer global, base
    10000, scale 1/sqrt(head_dim)); RoPE scaling, if any, is linear and for global layers."""
    import gguf

    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    if config.model_type == "gemma2":  # Gemma2Model.set_gguf_parameters: the soft-caps, one RoPE
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        writer.add_sliding_window(config.sliding_window)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
        return
    full = config.rope_parameters["full_attention"]
    writer.add_rope_freq_base(full["rope_theta"])
    writer.add_sliding_window(config.sliding_window)
    writer.add_head_count_kv(config.num_key_value_heads)
    if full.get("rope_type", "default") != "default":
        assert full["rope_type"] == "linear"
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(full["factor"])


def write_gemma3_gguf(checkpoint_dir: str | Path, out: str | Path,
                      tensor_type: Callable[[str, np.ndarray], str] = lambda name, w: "F32",
                      with_tokenizer: bool = True) -> Path:
    """A Gemma 3 checkpoint (Gemma3ForCausalLM, or the text part of Gemma3ForConditionalGeneration),
    or a Gemma 2 one, as llama.cpp's converter writes it, with a Gemma-style tokenizer of the
    model's vocab size."""
    import gguf
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(checkpoint_dir))
    config = getattr(config, "text_config", None) or config
    state = {}
    for f in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        state.update({k: v.to(torch.float32).numpy() for k, v in load_file(str(f)).items()})
    writer = gguf.GGUFWriter(str(out), "gemma2" if config.model_type == "gemma2" else "gemma3")
    _gemma3_metadata(writer, config)
    if with_tokenizer:
        _add_gemma_tokenizer(writer, config.vocab_size)
    for i, (name, w) in enumerate(gemma3_tensors(state, config).items()):
        _add_tensor(writer, name, np.ascontiguousarray(w, dtype=np.float32), tensor_type(name, w), seed=i)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(out)
