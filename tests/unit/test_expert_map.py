"""Expert parallelism's pieces in one process: vLLM's linear expert map, the loader keeping
only a rank's experts whole, and the ranks' outputs summing to the single-rank layer's
(gpt-oss's biases included: each expert's down bias added once, by its owner)."""

from __future__ import annotations

import pytest
import torch

from pagedlm.layers.fused_moe import layer as moe_layer
from pagedlm.layers.fused_moe import reference
from pagedlm.layers.fused_moe.layer import FusedMoE, determine_expert_map


@pytest.mark.parametrize("experts,ep", [(8, 2), (5, 2), (6, 4), (7, 3)])
def test_expert_map_is_vllms_linear_placement(experts: int, ep: int) -> None:
    owners = []
    for rank in range(ep):
        local, expert_map = determine_expert_map(ep, rank, experts)
        held = [e for e in range(experts) if expert_map[e] >= 0]
        assert len(held) == local == experts // ep + (1 if rank < experts % ep else 0)
        assert held == list(range(held[0], held[0] + local))  # contiguous
        assert [int(expert_map[e]) for e in held] == list(range(local))
        owners += held
    assert owners == list(range(experts))  # each expert on exactly one rank, in rank order
    assert determine_expert_map(1, 0, experts) == (experts, None)
    with pytest.raises(ValueError, match="at least as many experts"):
        determine_expert_map(4, 3, 3)


def _layer(monkeypatch, rank: int, ep: int, experts: int, has_bias: bool) -> FusedMoE:
    monkeypatch.setattr(moe_layer, "moe_tp_rank_size", lambda: (rank, ep))
    monkeypatch.setattr(moe_layer, "moe_ep_rank_size", lambda: (rank, ep) if ep > 1 else (0, 1))
    kwargs = dict(has_bias=True, activation="swigluoai") if has_bias else {}
    return FusedMoE(experts, 2, 8, 12, renormalize=True, **kwargs)


@pytest.mark.parametrize("has_bias", [False, True])
@pytest.mark.parametrize("experts", [8, 5])
def test_ranks_sum_to_the_single_rank_layer(monkeypatch, experts: int, has_bias: bool) -> None:
    g = torch.Generator().manual_seed(experts)
    w1, w3 = torch.randn(experts, 12, 8, generator=g), torch.randn(experts, 12, 8, generator=g)
    w2 = torch.randn(experts, 8, 12, generator=g)
    b13, b2 = torch.randn(experts, 24, generator=g), torch.randn(experts, 8, generator=g)
    x, logits = torch.randn(9, 8, generator=g), torch.randn(9, experts, generator=g)

    def load(moe: FusedMoE) -> None:
        for e in range(experts):  # every expert offered, as a checkpoint does
            moe.w13_weight.weight_loader(moe.w13_weight, w1[e], (e, "w1"))
            moe.w13_weight.weight_loader(moe.w13_weight, w3[e], (e, "w3"))
            moe.w2_weight.weight_loader(moe.w2_weight, w2[e], (e, "w2"))
            if moe.w13_bias is not None:
                moe.w13_bias.weight_loader(moe.w13_bias, b13[e, :12], (e, "w1"))
                moe.w13_bias.weight_loader(moe.w13_bias, b13[e, 12:], (e, "w3"))
                moe.w2_bias.weight_loader(moe.w2_bias, b2[e], (e, "w2"))

    single = _layer(monkeypatch, 0, 1, experts, has_bias)
    load(single)
    expected = single(x, logits)
    monkeypatch.setattr("pagedlm.worker.distributed.tensor_model_parallel_all_reduce", lambda t: t)
    total = torch.zeros_like(expected)
    start = 0
    for rank in range(2):
        moe = _layer(monkeypatch, rank, 2, experts, has_bias)
        local = moe.local_num_experts
        assert moe.w13_weight.shape == (local, 24, 8) and moe.w2_weight.shape == (local, 8, 12)  # whole experts
        load(moe)
        assert torch.equal(moe.w2_weight, w2[start : start + local])
        assert torch.equal(moe.w13_weight[:, :12], w1[start : start + local])
        start += local
        total += moe(x, logits)
    assert start == experts
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)


def test_reference_skips_negative_ids() -> None:
    g = torch.Generator().manual_seed(3)
    x, w13, w2 = torch.randn(4, 8, generator=g), torch.randn(3, 24, 8, generator=g), torch.randn(3, 8, 12, generator=g)
    ids = torch.tensor([[0, -1], [-1, -1], [2, 1], [1, -1]])
    weights = torch.rand(4, 2, generator=g)
    out = reference.fused_experts(x, w13, w2, weights.masked_fill(ids < 0, 0), ids, skip_negative_ids=True)
    kept = reference.fused_experts(x, w13, w2, weights.masked_fill(ids < 0, 0), ids.clamp(min=0))
    torch.testing.assert_close(out, kept)
    assert torch.equal(out[1], torch.zeros(8))
