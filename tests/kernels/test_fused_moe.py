"""The Triton fused MoE kernel against its PyTorch reference (float32 on CPU as the oracle).

Runs on a CUDA machine; skipped elsewhere. With TRITON_INTERPRET=1 it also runs on CPU
through Triton's interpreter (slow; a debugging aid)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not torch.cuda.is_available() and not _INTERPRET:
    pytest.skip("the fused MoE kernel needs CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.layers.fused_moe import reference, triton_moe  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter's bf16 tl.dot is unreliable (see test_triton_kernels.py): fp16 there.
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16

CASES = [
    # tokens, experts, top_k, hidden, intermediate
    (1, 8, 2, 128, 64),  # decode, Mixtral-like routing
    (7, 128, 8, 256, 96),  # decode batch, Qwen3-30B-A3B-like routing (most experts idle)
    (33, 8, 2, 200, 72),  # dims that are not multiples of the tiles
    (300, 16, 4, 256, 128),  # prefill: several tiles per expert
    (1024, 64, 6, 128, 64),
]


def make_case(tokens, experts, top_k, hidden, inter, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=g) / hidden**0.5
    w2 = torch.randn(experts, hidden, inter, generator=g) / inter**0.5
    logits = torch.randn(tokens, experts, generator=g)
    return x, w13, w2, logits


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float().cpu(), ref.float().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


@pytest.mark.parametrize("case", CASES, ids=lambda c: "t{}-e{}-k{}-h{}-i{}".format(*c))
@pytest.mark.parametrize("renormalize", [True, False])
def test_fused_experts_matches_reference(case, renormalize):
    x, w13, w2, logits = make_case(*case, seed=sum(case))
    top_k = case[2]
    weights, ids = reference.select_experts(logits, top_k, renormalize)
    ref = reference.fused_experts(x, w13, w2, weights, ids)
    out = triton_moe.fused_experts(x.to(DEVICE, DTYPE), w13.to(DEVICE, DTYPE), w2.to(DEVICE, DTYPE),
                                   weights.to(DEVICE), ids.to(DEVICE))
    assert out.shape == ref.shape and out.dtype == DTYPE
    assert torch.isfinite(out.float()).all()
    assert rel_err(out, ref) < 2e-2


@pytest.mark.parametrize("block_m", [16, 32, 64])
def test_align_by_expert_groups_and_pads(block_m):
    tokens, experts, top_k = 37, 8, 3
    ids = torch.randint(0, experts, (tokens, top_k), generator=torch.Generator().manual_seed(block_m)).to(DEVICE)
    sorted_ids, expert_ids, num_padded = triton_moe.align_by_expert(ids, experts, block_m)
    n = tokens * top_k
    padded_total = int(num_padded.item())
    assert padded_total % block_m == 0
    flat = ids.reshape(-1).cpu()
    sorted_ids, expert_ids = sorted_ids.cpu(), expert_ids.cpu()
    valid = sorted_ids[sorted_ids < n]
    assert sorted(valid.tolist()) == list(range(n))  # every (token, slot) exactly once
    for tile in range(padded_total // block_m):
        rows = sorted_ids[tile * block_m : (tile + 1) * block_m]
        rows = rows[rows < n]
        assert (flat[rows.long()] == expert_ids[tile]).all()  # one expert per tile
    assert (expert_ids[padded_total // block_m :] == -1).all()


def test_fused_experts_in_cuda_graph():
    if DEVICE != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    x, w13, w2, logits = make_case(8, 32, 4, 256, 128, seed=5)
    args = [t.to(DEVICE, DTYPE) for t in (x, w13, w2)]
    weights, ids = reference.select_experts(logits.to(DEVICE), 4, True)
    triton_moe.fused_experts(*args, weights, ids)  # compile first
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_moe.fused_experts(*args, weights, ids)
    new_logits = torch.randn(8, 32, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    new_w, new_ids = reference.select_experts(new_logits, 4, True)
    weights.copy_(new_w)
    ids.copy_(new_ids)
    graph.replay()
    expected = reference.fused_experts(x, w13, w2, new_w.cpu(), new_ids.cpu())
    assert rel_err(out, expected) < 2e-2


@pytest.mark.parametrize("with_bias", [False, True])
def test_expert_parallel_shares_sum_to_the_whole(with_bias):
    """Expert parallelism: each of two ranks holds a contiguous run of whole experts (5 = 3 + 2)
    and gets the global top-k ids mapped to local ones, -1 for the other rank's experts. The
    kernel skips those slots (their rows are never computed, nor summed); the two shares add
    up to the single-rank output, each expert's down bias counted once."""
    x, w13, w2, logits = make_case(19, 5, 2, 64, 32, seed=11)
    g = torch.Generator().manual_seed(12)
    b13, b2 = (torch.randn(5, 64, generator=g), torch.randn(5, 64, generator=g)) if with_bias else (None, None)
    weights, ids = reference.select_experts(logits, 2, True)
    extra = dict(activation="swigluoai") if with_bias else {}
    ref = reference.fused_experts(x, w13, w2, weights, ids, b13, b2, **extra)
    total = torch.zeros(ref.shape, dtype=torch.float32)
    for start, local in ((0, 3), (3, 2)):
        expert_map = torch.full((5,), -1, dtype=torch.int32)
        expert_map[start : start + local] = torch.arange(local, dtype=torch.int32)
        local_ids = expert_map[ids]
        local_w = weights.masked_fill(local_ids < 0, 0.0)
        cut = slice(start, start + local)
        dev = lambda t: None if t is None else t[cut].to(DEVICE, DTYPE)  # noqa: E731
        out = triton_moe.fused_experts(x.to(DEVICE, DTYPE), dev(w13), dev(w2), local_w.to(DEVICE), local_ids.to(DEVICE),
                                       w13_bias=dev(b13), w2_bias=dev(b2), skip_negative_ids=True, **extra)
        assert torch.isfinite(out.float()).all()
        total += out.float().cpu()
    assert rel_err(total, ref) < 2e-2
