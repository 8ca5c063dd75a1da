"""The LoRA shrink / expand Triton kernels against their PyTorch references (float32 on
the host as the oracle): mixed slots and base-model tokens in one batch, one to three
slices (tiles straddling slice boundaries), ranks below the slot width, batch sizes from a
single decode token to a prefill. Skipped without CUDA (or TRITON_INTERPRET=1 with Triton)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
if not torch.cuda.is_available() and not _INTERPRET:
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.lora import ops, triton_lora  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter computes bf16 tl.dot wrongly (see test_triton_kernels.py): fp16 there.
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16
TOL = 2e-2  # ||out - ref|| / ||ref||


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-6)).item()


def _case(num_tokens: int, in_dim: int, widths: list[int], max_rank: int, rank: int, num_slots: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, in_dim, generator=gen)
    a = torch.zeros(num_slots, len(widths) * max_rank, in_dim)
    b = torch.zeros(num_slots, sum(widths), max_rank)
    for i in range(len(widths)):  # rank < max_rank: the padding stays zero, as the manager leaves it
        a[:, i * max_rank:i * max_rank + rank] = torch.randn(num_slots, rank, in_dim, generator=gen) * 0.1
    b[:, :, :rank] = torch.randn(num_slots, sum(widths), rank, generator=gen) * 0.1
    slots = torch.randint(-1, num_slots, (num_tokens,), generator=gen, dtype=torch.int32)
    y = torch.randn(num_tokens, sum(widths), generator=gen)
    return x, a, b, slots, y


@pytest.mark.parametrize("num_tokens", [1, 7, 40, 300])
@pytest.mark.parametrize("widths,max_rank,rank", [([96], 16, 16), ([64, 32, 32], 16, 8), ([80, 80], 32, 32)])
def test_shrink_expand_match_reference(num_tokens, widths, max_rank, rank):
    x, a, b, slots, y = _case(num_tokens, 160, widths, max_rank, rank, 4, seed=num_tokens)
    starts = tuple(int(s) for s in torch.tensor([0, *widths]).cumsum(0).tolist())
    ref_shrunk = ops.lora_shrink_ref(x, a, slots)
    ref_y = y.clone()
    ops.lora_expand_ref(ref_y, ref_shrunk, b, slots, starts, max_rank)
    dev = dict(device=DEVICE)
    shrunk = triton_lora.lora_shrink(x.to(DTYPE).to(**dev), a.to(DTYPE).to(**dev), slots.to(**dev))
    assert shrunk.dtype == torch.float32
    assert _rel(shrunk.cpu(), ref_shrunk) < TOL
    base_rows = slots < 0
    assert not shrunk.cpu()[base_rows].any()  # base-model tokens: nothing
    out_y = y.to(DTYPE).to(**dev)
    before = out_y.clone()
    triton_lora.lora_expand(out_y, shrunk, b.to(DTYPE).to(**dev), slots.to(**dev), starts, max_rank)
    assert torch.equal(out_y.cpu()[base_rows], before.cpu()[base_rows])
    assert _rel(out_y.cpu() - before.cpu(), ref_y - y) < TOL


@pytest.mark.parametrize("num_tokens", [5, 100])
def test_shrink_split_k_matches_reference(num_tokens):
    """An input wider than one K split (down_proj-like): partial sums added atomically."""
    x, a, _, slots, _ = _case(num_tokens, 1100, [32], 16, 16, 3, seed=7)
    ref = ops.lora_shrink_ref(x, a, slots)
    out = triton_lora.lora_shrink(x.to(DTYPE).to(DEVICE), a.to(DTYPE).to(DEVICE), slots.to(DEVICE))
    assert 1100 > triton_lora.SPLIT_K_WIDTH and _rel(out.cpu(), ref) < TOL
    assert not out.cpu()[slots < 0].any()


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need CUDA")
def test_kernels_replay_in_a_cuda_graph_with_a_new_mapping():
    """The mapping is read at replay: the same graph serves another step's adapters."""
    x, a, b, slots, y = _case(16, 128, [64, 64], 16, 16, 3, seed=3)
    x, a, b, y = (t.to(DTYPE).cuda() for t in (x, a, b, y))
    slot_buf = slots.cuda()
    out = y.clone()

    def step():
        out.copy_(y)
        triton_lora.lora_expand(out, triton_lora.lora_shrink(x, a, slot_buf), b, slot_buf, (0, 64, 128), 16)

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for trial in range(3):
        new = torch.randint(-1, 3, (16,), dtype=torch.int32, generator=torch.Generator().manual_seed(trial))
        slot_buf.copy_(new)
        graph.replay()
        ref = y.float().cpu().clone()
        ops.lora_expand_ref(ref, ops.lora_shrink_ref(x.float().cpu(), a.float().cpu(), new), b.float().cpu(),
                            new, (0, 64, 128), 16)
        assert _rel(out.float().cpu() - y.float().cpu(), ref - y.float().cpu()) < TOL
