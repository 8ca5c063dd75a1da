"""Non-Llama decoders (GPT-NeoX, ...): greedy token ids and logprobs equal transformers
(float32, CPU) on tiny random checkpoints, a batch of prompts of 1 to 70 tokens, plainly
and with chunked prefill over 4-token blocks. Each config exercises its family's quirks
(partial or GPT-J-style RoPE, parallel residuals, fused per-head QKV, GQA, sliding
windows, logit scales)."""

from __future__ import annotations

import pytest

from models.arch_parity_helpers import check_plain_and_chunked, checkpoint_getter

# name -> (architecture, config overrides). num_key_value_heads: the shared tiny config sets
# 2; families without GQA must not carry it (pagedlm sizes the KV cache from it).
CHECKPOINTS = {
    "gpt_neox": ("GPTNeoXForCausalLM", dict(
        num_key_value_heads=4, use_parallel_residual=True, hidden_act="gelu",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    "gpt_neox_sequential": ("GPTNeoXForCausalLM", dict(
        num_key_value_heads=4, use_parallel_residual=False, hidden_act="gelu_new", tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.25})),
    # GQA (4 query heads, 2 KV heads), a window shorter than most prompts, biases, tied head.
    "starcoder2": ("Starcoder2ForCausalLM", dict(sliding_window=8, hidden_act="gelu_pytorch_tanh", use_bias=True,
                                                 tie_word_embeddings=True)),
    # Command-R+: per-head q/k LayerNorms; a logit scale that changes the logprobs; GQA.
    "cohere": ("CohereForCausalLM", dict(use_qk_norm=True, logit_scale=0.5, layer_norm_eps=1e-5,
                                         tie_word_embeddings=True, pad_token_id=0)),
    # Command-R7B: layer 0 slides (window 8, RoPE), layer 1 is global without position embedding.
    "cohere2": ("Cohere2ForCausalLM", dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                                           logit_scale=0.25, tie_word_embeddings=True, pad_token_id=0)),
    # RoPE on half of each head, adjacent pairs; an LM head with a bias.
    "gptj": ("GPTJForCausalLM", dict(num_key_value_heads=4, n_inner=128, rotary_dim=8,
                                     activation_function="gelu_new")),
    # StarCoder 1: multi-query (one K/V head), learned positions; and the per-head c_attn layout.
    "gpt_bigcode": ("GPTBigCodeForCausalLM", dict(multi_query=True, num_key_value_heads=1, n_inner=128,
                                                  activation_function="gelu_pytorch_tanh")),
    "gpt_bigcode_mha": ("GPTBigCodeForCausalLM", dict(multi_query=False, num_key_value_heads=4, n_inner=128,
                                                      activation_function="gelu", tie_word_embeddings=False)),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return checkpoint_getter(tmp_path_factory, CHECKPOINTS, 100)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_parity(checkpoint, name):
    check_plain_and_chunked(checkpoint(name))
