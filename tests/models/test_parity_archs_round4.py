"""Round 4 of the decoders vLLM serves (OLMo 3, EXAONE 4, Apertus, Arcee, Helium, Nemotron,
StableLM, Seed-OSS, HunYuan dense): greedy token ids and logprobs equal transformers
(float32, CPU) on tiny random checkpoints, a batch of prompts of 1 to 70 tokens, plainly and
with chunked prefill over 4-token blocks. Each config sets its family's quirks to values that
change the result (sliding windows shorter than the prompts, RoPE per layer type, NoPE
layers, partial or interleaved RoPE, biases, q/k norms)."""

from __future__ import annotations

import pytest

from models.arch_parity_helpers import check_plain_and_chunked, checkpoint_getter

# name -> (architecture, config overrides)
CHECKPOINTS = {
    # OLMo 3: sliding layers (window 8) then a full one; each layer type its own RoPE (the full
    # layers' linear scaling and base differ from the sliding layers').
    "olmo3": ("Olmo3ForCausalLM", dict(
        num_hidden_layers=3, sliding_window=8, pad_token_id=0,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                         "full_attention": {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}})),
    # EXAONE 4: post-norms, per-head q/k norms; sliding layers (window 8) use RoPE, the full
    # layer none.
    "exaone4": ("Exaone4ForCausalLM", dict(num_hidden_layers=3, sliding_window=8, sliding_window_pattern=3,
                                           head_dim=16)),
    # Apertus: xIELU (its parameters randomised too), ungated MLP, per-head q/k norms, llama3 RoPE.
    "apertus": ("ApertusForCausalLM", dict(pad_token_id=0, rope_parameters={
        "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "original_max_position_embeddings": 64,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0})),
    # Arcee: relu2 ungated MLP with biases.
    "arcee": ("ArceeForCausalLM", dict(mlp_bias=True, attention_bias=True)),
    # Helium: GPT-J-style RoPE, q/k/v bias but no o_proj bias.
    "helium": ("HeliumForCausalLM", dict(head_dim=16, attention_bias=True, num_key_value_heads=2, pad_token_id=0)),
    # Nemotron: LayerNorm1P with biases, RoPE on half of each head, relu2 ungated MLP, biases.
    "nemotron": ("NemotronForCausalLM", dict(head_dim=16, norm_eps=1e-5, attention_bias=True, mlp_bias=True,
                                             rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                              "partial_rotary_factor": 0.5})),
    # StableLM-2: per-head q/k LayerNorms, parallel attention + MLP, q/k/v biases, 25% RoPE.
    "stablelm_par": ("StableLmForCausalLM", dict(qk_layernorm=True, use_parallel_residual=True, use_qkv_bias=True,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                  "partial_rotary_factor": 0.25})),
    # StableLM-3B-4E1T: sequential blocks, no biases, no q/k norms, 50% RoPE.
    "stablelm_seq": ("StableLmForCausalLM", dict(qk_layernorm=False, use_parallel_residual=False,
                                                 use_qkv_bias=False,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 500.0,
                                                                  "partial_rotary_factor": 0.5})),
    # Phi-3 with RoPE on half of each head (the Llama model's partial rotary, as Phi-4-mini).
    "phi3_partial": ("Phi3ForCausalLM", dict(pad_token_id=0, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5})),
    # Seed-OSS: q/k/v biases, none on o_proj (attention_out_bias False); head_dim 32 over hidden 64.
    "seed_oss": ("SeedOssForCausalLM", dict(head_dim=32, attention_bias=True, attention_out_bias=False,
                                            attention_dropout=0.0, residual_dropout=0.0, pad_token_id=0)),
    # HunYuan dense: q/k norms after RoPE, the fixed-alpha NTK RoPE.
    "hunyuan": ("HunYuanDenseV1ForCausalLM", dict(head_dim=16, rope_parameters={
        "rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 50.0, "factor": 1.0})),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return checkpoint_getter(tmp_path_factory, CHECKPOINTS, 400)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_parity(checkpoint, name):
    check_plain_and_chunked(checkpoint(name))
