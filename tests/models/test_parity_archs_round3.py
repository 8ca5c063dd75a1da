"""Round 3 of the decoders vLLM serves (Phi-1/2, ...): greedy token ids and logprobs equal
transformers (float32, CPU) on tiny random checkpoints, a batch of prompts of 1 to 70
tokens, plainly and with chunked prefill over 4-token blocks. Each config sets its family's
quirks to values that change the result (partial or interleaved RoPE, parallel blocks,
post-norms, biases, GQA / multi-query)."""

from __future__ import annotations

import pytest

from models.arch_parity_helpers import check_plain_and_chunked, checkpoint_getter

# name -> (architecture, config overrides)
CHECKPOINTS = {
    # Phi-2: RoPE on 40% of each head, GQA, per-head q/k LayerNorms, GELU-new, LM head bias.
    "phi": ("PhiForCausalLM", dict(hidden_act="gelu_new", qk_layernorm=True, layer_norm_eps=1e-5,
                                   rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                    "partial_rotary_factor": 0.5})),
    "phi_mha": ("PhiForCausalLM", dict(num_key_value_heads=4, hidden_act="gelu",
                                       rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                        "partial_rotary_factor": 0.25})),
    # GLM-4: interleaved RoPE on half of each head (head_dim 32 over hidden 64), q/k/v biases
    # but none on o_proj, fused gate_up; GLM-4-0414 adds post-attention / post-MLP norms.
    "glm": ("GlmForCausalLM", dict(head_dim=32, pad_token_id=0)),
    "glm4": ("Glm4ForCausalLM", dict(head_dim=16, pad_token_id=0, tie_word_embeddings=True,
                                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                      "partial_rotary_factor": 0.5})),
    # ERNIE 4.5: interleaved RoPE over the whole head, biases everywhere (use_bias), tied head.
    "ernie4_5": ("Ernie4_5ForCausalLM", dict(head_dim=16, use_bias=True, pad_token_id=0,
                                             tie_word_embeddings=True)),
    "ernie4_5_nobias": ("Ernie4_5ForCausalLM", dict(head_dim=32, use_bias=False, pad_token_id=0,
                                                    tie_word_embeddings=False)),
    # Falcon-7B: multi-query (one K/V head), one LayerNorm, parallel attention + MLP, tied head.
    # num_key_value_heads (set by the shared tiny config) is not a Falcon field: it is ignored.
    "falcon_mq": ("FalconForCausalLM", dict(multi_query=True, parallel_attn=True, bias=False,
                                            tie_word_embeddings=True, ffn_hidden_size=128)),
    # Falcon-40B: 2 K/V groups, ln_attn / ln_mlp, biases, untied head.
    "falcon_new": ("FalconForCausalLM", dict(new_decoder_architecture=True, num_kv_heads=2, bias=True,
                                             parallel_attn=True, tie_word_embeddings=False)),
    # The original layout: per-head [q | k | v], sequential attention then MLP.
    "falcon_seq": ("FalconForCausalLM", dict(multi_query=False, parallel_attn=False, bias=True,
                                             activation="gelu_new",
                                             rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    # OLMo 1: parameter-free LayerNorms; clip_qkv small enough to clamp (the tiny weights give
    # q / k / v entries beyond 0.5).
    "olmo": ("OlmoForCausalLM", dict(clip_qkv=0.5, pad_token_id=0, tie_word_embeddings=True)),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return checkpoint_getter(tmp_path_factory, CHECKPOINTS, 300)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_parity(checkpoint, name):
    check_plain_and_chunked(checkpoint(name))


@pytest.mark.parametrize("name,kv_heads", [("falcon_mq", 1), ("falcon_new", 2), ("falcon_seq", 4)])
def test_falcon_kv_heads(checkpoint, name, kv_heads):
    """The KV cache is sized from Falcon's own fields, not the stray num_key_value_heads."""
    from transformers import AutoConfig

    from pagedlm.config import attention_shape

    config = AutoConfig.from_pretrained(checkpoint(name))
    assert getattr(config, "num_key_value_heads", None) == 2
    assert attention_shape(config) == (4, kv_heads, 16)


@pytest.mark.parametrize("name,override,message", [
    ("falcon_mq", dict(alibi=True), "alibi"),
    ("falcon_new", dict(parallel_attn=False), "parallel_attn"),
    ("falcon_seq", dict(num_ln_in_parallel_attn=2), "num_ln_in_parallel_attn"),
    ("phi", dict(hidden_act="relu"), "relu"),
    ("glm", dict(hidden_act="gelu"), "gelu"),
])
def test_unsupported_settings_are_refused(checkpoint, name, override, message):
    from transformers import AutoConfig

    from pagedlm.config import ConfigError
    from pagedlm.models.registry import resolve_model_class

    config = AutoConfig.from_pretrained(checkpoint(name))
    for key, value in override.items():
        setattr(config, key, value)
    with pytest.raises(ConfigError, match=message):
        resolve_model_class(config.architectures)(config, max_position=64)
