"""Checkpoint directories (config + tokenizer, no weights) of benchmark shapes, for
`--load-format dummy`. `python -m pagedlm.benchmarks.shapes NAME OUT_DIR`. A shape is a Llama
config unless it names its own ``architectures`` / ``model_type``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SHAPES = {
    # The reference shape of the GPU targets.
    "llama-3.1-8b": dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, torch_dtype="bfloat16",
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    ),
    # A 1B-shape draft for the 8B target (benchmarks/gpu_spec_decode.py): same vocabulary.
    "llama-3.2-1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, torch_dtype="bfloat16", tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    ),
    # MoE shapes (benchmarks/gpu_moe.py): 128 experts top-8, 3.3B of 30.5B parameters active.
    "qwen3-30b-a3b": dict(
        architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe",
        hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
        num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
        vocab_size=151936, max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
        torch_dtype="bfloat16",
    ),
    "mixtral-8x7b": dict(
        architectures=["MixtralForCausalLM"], model_type="mixtral",
        hidden_size=4096, intermediate_size=14336, num_local_experts=8, num_experts_per_tok=2,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
        max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=1000000.0, torch_dtype="bfloat16",
    ),
    # DeepSeek-V2-Lite (15.7B, 2.4B active): multi-head latent attention (cached decompressed,
    # 16 heads x 192), 64 routed experts top-6 plus 2 shared, softmax greedy routing.
    "deepseek-v2-lite": dict(
        architectures=["DeepseekV2ForCausalLM"], model_type="deepseek_v2",
        hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=27,
        num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2,
        num_experts_per_tok=6, first_k_dense_replace=1, moe_layer_freq=1, kv_lora_rank=512, q_lora_rank=None,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, topk_method="greedy", n_group=1, topk_group=1,
        norm_topk_prob=False, scoring_func="softmax", routed_scaling_factor=1.0, vocab_size=102400,
        max_position_embeddings=163840, rope_theta=10000.0, rms_norm_eps=1e-6, torch_dtype="bfloat16",
        rope_scaling={"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 0.707,
                      "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096},
    ),
    # The MoE code path at toy size (CPU smoke run of benchmarks/gpu_moe.py).
    "moe-tiny": dict(
        architectures=["Qwen3MoeForCausalLM"], model_type="qwen3_moe",
        hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=1024,
        rms_norm_eps=1e-6, rope_theta=10000.0, torch_dtype="float32",
    ),
    # The tensor-parallel target (TP=2 on two H200s; 141 GB of bf16 weights).
    "llama-3.1-70b": dict(
        hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, torch_dtype="bfloat16",
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    ),
    # A few tens of millions of parameters: the CPU benchmark.
    "cpu-small": dict(
        hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, vocab_size=8192, max_position_embeddings=2048, rms_norm_eps=1e-5,
        rope_theta=10000.0, torch_dtype="float32",
    ),
}


def make_shape_dir(name: str, out_dir: str | Path) -> Path:
    from pagedlm.demo import build_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 4, **SHAPES[name]}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    build_tokenizer(out)  # only used for ids at either end; benchmarks do not detokenize
    return out


def build_synthetic_vocab_tokenizer(out_dir: str | Path, vocab_size: int) -> Path:
    """A byte-level BPE tokenizer with ``vocab_size`` distinct entries (bytes, then letter
    strings with and without a leading space, longest last), for benchmarks whose per-step
    cost depends on the vocabulary's strings (structured-output masks): the shape's small
    training tokenizer would make those far cheaper than a real 128k vocabulary."""
    import itertools
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from pagedlm.demo import SPECIAL_TOKENS

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab: dict[str, int] = {}
    for piece in sorted(alphabet):
        vocab.setdefault(piece, len(vocab))
    letters = string.ascii_lowercase + string.ascii_uppercase[:6] + string.digits[:4] + "{}[]\":,"
    budget = vocab_size - len(SPECIAL_TOKENS)
    for length in itertools.count(2):
        for chars in itertools.product(letters, repeat=length):
            word = "".join(chars)
            for piece in (word, "\u0120" + word):
                if len(vocab) < budget:
                    vocab.setdefault(piece, len(vocab))
            if len(vocab) >= budget:
                break
        if len(vocab) >= budget:
            break
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|end_of_text|>")
    out = Path(out_dir)
    fast.save_pretrained(str(out))
    return out


if __name__ == "__main__":
    print(make_shape_dir(sys.argv[1], sys.argv[2]))
