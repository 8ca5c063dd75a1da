"""Round 2 of the mixture-of-experts decoders vLLM serves: greedy token ids and logprobs equal
transformers (float32, CPU) on tiny random checkpoints, plainly and with chunked prefill
over 4-token blocks. Each config sets its family's routing quirks to values that change the
result: un-normalised top-k, q / k norms with clip_qkv, Granite's multipliers and 3-D expert
tensors, a shared MLP beside the experts, a correction bias on the choice, sigmoid scores
with group-limited top-k and a routed scale, dense first layers, partial RoPE."""

from __future__ import annotations

import pytest

from models.arch_parity_helpers import check_plain_and_chunked, checkpoint_getter

# name -> (architecture, config overrides)
CHECKPOINTS = {
    # OLMoE: whole-projection q / k norms, clip_qkv that clamps, softmax top-2 of 8 un-normalised.
    "olmoe": ("OlmoeForCausalLM", dict(num_experts=8, num_experts_per_tok=2, intermediate_size=32,
                                       clip_qkv=0.8, norm_topk_prob=False, pad_token_id=0)),
    # GraniteMoe: every multiplier away from 1, 3-D expert tensors, top-2 of 4, attention bias.
    "granitemoe": ("GraniteMoeForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=32,
                                                 embedding_multiplier=3.0, residual_multiplier=0.5,
                                                 attention_multiplier=0.2, logits_scaling=2.5,
                                                 attention_bias=True, tie_word_embeddings=True)),
    # GraniteMoeShared: a shared MLP (width 48) beside top-3 of 6 experts.
    "granitemoeshared": ("GraniteMoeSharedForCausalLM", dict(num_local_experts=6, num_experts_per_tok=3,
                                                             intermediate_size=32, shared_intermediate_size=48,
                                                             embedding_multiplier=2.0, residual_multiplier=0.7,
                                                             attention_multiplier=0.25, logits_scaling=1.5)),
    # PhiMoE: sparsemixer top-2 of 6 with a window wide enough to hold several experts,
    # LayerNorms with biases, attention and LM head biases.
    "phimoe": ("PhimoeForCausalLM", dict(num_local_experts=6, num_experts_per_tok=2, intermediate_size=32,
                                         router_jitter_noise=0.3, attention_bias=True, lm_head_bias=True,
                                         rms_norm_eps=1e-5)),
    # ERNIE 4.5 MoE: layer 0 dense, MoE on layers 1-2; the (random) correction bias moves the
    # choice; two shared experts; biases everywhere, the LM head's included.
    "ernie4_5_moe": ("Ernie4_5_MoeForCausalLM", dict(num_hidden_layers=3, moe_num_experts=6, moe_k=2,
                                                     moe_intermediate_size=32, moe_num_shared_experts=2,
                                                     moe_layer_start_index=1, moe_layer_end_index=-1,
                                                     use_bias=True, head_dim=16, pad_token_id=0)),
    # GLM-4.5: layer 0 dense, sigmoid scores with a (random) correction bias, top-3 of 8 within
    # the best 2 of 4 groups, routed scale 2.5, a shared expert, q / k norms, RoPE on a quarter
    # of each head, q / k / v biases.
    "glm4_moe": ("Glm4MoeForCausalLM", dict(num_hidden_layers=3, n_routed_experts=8, num_experts_per_tok=3,
                                            moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
                                            n_group=4, topk_group=2, routed_scaling_factor=2.5,
                                            norm_topk_prob=True, use_qk_norm=True, attention_bias=True,
                                            head_dim=32, pad_token_id=0,
                                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "partial_rotary_factor": 0.25})),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return checkpoint_getter(tmp_path_factory, CHECKPOINTS, 500)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_parity(checkpoint, name):
    check_plain_and_chunked(checkpoint(name))


def _logits(num_tokens: int, num_experts: int, seed: int):
    import torch

    return torch.randn(num_tokens, num_experts, generator=torch.Generator().manual_seed(seed)) * 2.0


@pytest.mark.parametrize("jitter", [0.01, 0.3, 1.0])
def test_sparsemixer_matches_transformers(jitter):
    import torch
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    from pagedlm.layers.fused_moe.reference import select_experts

    logits = _logits(64, 6, 1)
    ref_w, ref_ids = sparsemixer(logits, jitter_eps=jitter, training=False, top_k=2)
    weights, ids = select_experts(logits, 2, False, scoring_func="sparsemixer", jitter_eps=jitter)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_w)


def _sorted(weights, ids):
    import torch

    order = torch.argsort(ids, dim=-1)
    return weights.gather(1, order), ids.gather(1, order)


def test_grouped_sigmoid_routing_matches_glm4_moe_router():
    """GLM-4.5's router (transformers) against select_experts; the bias and the group limit
    each change the choice."""
    import torch
    from transformers import Glm4MoeConfig
    from transformers.models.glm4_moe.modeling_glm4_moe import Glm4MoeTopkRouter

    from pagedlm.layers.fused_moe.reference import select_experts

    config = Glm4MoeConfig(hidden_size=16, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
                           routed_scaling_factor=2.5, norm_topk_prob=True)
    router = Glm4MoeTopkRouter(config)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        router.weight.copy_(torch.randn(8, 16, generator=gen))
        router.e_score_correction_bias.copy_(torch.randn(8, generator=gen) * 0.3)
    hidden = torch.randn(64, 16, generator=gen)
    logits, ref_w, ref_ids = router(hidden)
    kwargs = dict(scoring_func="sigmoid", num_expert_group=4, topk_group=2, routed_scaling_factor=2.5)
    bias = router.e_score_correction_bias
    weights, ids = select_experts(logits, 3, True, correction_bias=bias, **kwargs)
    ref_w, ref_ids = _sorted(ref_w, ref_ids)
    weights, ids = _sorted(weights, ids)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_w)
    assert not torch.equal(_sorted(*select_experts(logits, 3, True, **kwargs))[1], ids)
    assert not torch.equal(_sorted(*select_experts(logits, 3, True, correction_bias=bias,
                                                   **{**kwargs, "num_expert_group": 1}))[1], ids)


def test_stacked_expert_tensors_load_as_per_expert_ones(checkpoint):
    """transformers 5's in-memory layout (mlp.experts.gate_up_proj [E, 2I, H], down_proj
    [E, H, I]) loads into the same parameters as the per-expert tensors on disk."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from pagedlm.models.olmoe import OlmoeForCausalLM

    path = checkpoint("olmoe")
    config = AutoConfig.from_pretrained(path)
    tensors = load_file(f"{path}/model.safetensors")
    stacked, experts = {}, config.num_experts
    for name, tensor in tensors.items():
        if ".mlp.experts." not in name:
            stacked[name] = tensor
        elif ".mlp.experts.0.gate_proj." in name:
            prefix = name.split(".mlp.experts.")[0] + ".mlp.experts."
            stacked[prefix + "gate_up_proj"] = torch.stack(
                [torch.cat([tensors[f"{prefix}{e}.gate_proj.weight"], tensors[f"{prefix}{e}.up_proj.weight"]])
                 for e in range(experts)])
            stacked[prefix + "down_proj"] = torch.stack([tensors[f"{prefix}{e}.down_proj.weight"]
                                                         for e in range(experts)])
    with torch.device("cpu"):
        per_expert, fused = OlmoeForCausalLM(config), OlmoeForCausalLM(config)
    loaded = per_expert.load_weights(tensors.items())
    assert fused.load_weights(stacked.items()) == loaded
    fused_params = dict(fused.named_parameters())
    for name, param in per_expert.named_parameters():
        assert torch.equal(param, fused_params[name]), name
