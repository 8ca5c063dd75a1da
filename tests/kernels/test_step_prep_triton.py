"""Triton step preparation against its PyTorch reference (CUDA, or TRITON_INTERPRET=1 on CPU)."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels.step_prep import prepare_step, prepare_step_triton  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _outputs(num_tokens: int, num_seqs: int, width: int) -> tuple[torch.Tensor, ...]:
    return (torch.full((num_tokens,), -7, dtype=torch.int64, device=DEVICE),
            torch.full((num_tokens,), -7, dtype=torch.int64, device=DEVICE),
            torch.full((num_seqs,), -7, dtype=torch.int64, device=DEVICE),
            torch.full((num_seqs, width), -7, dtype=torch.int64, device=DEVICE))


@pytest.mark.parametrize("num_seqs,num_actual,max_query,width,block_size",
                         [(1, 1, 1, 8, 16), (7, 5, 1, 40, 16), (9, 9, 300, 64, 16), (4, 3, 20, 2000, 8)])
def test_triton_step_prep_matches_reference(num_seqs: int, num_actual: int, max_query: int, width: int,
                                            block_size: int) -> None:
    g = torch.Generator().manual_seed(num_seqs * 1000 + width)
    max_ctx = width * block_size
    counts = torch.randint(1, max_query + 1, (num_seqs,), generator=g)
    counts[num_actual:] = 1  # padding sequences: one token each
    computed = torch.stack([torch.randint(0, max_ctx - int(c) + 1, (1,), generator=g)[0] for c in counts])
    qsl = torch.zeros(num_seqs + 1, dtype=torch.int64)
    qsl[1:] = counts.cumsum(0)
    table = torch.randint(0, 10_000, (num_seqs + 3, width), generator=g, dtype=torch.int32)
    rows = torch.randperm(num_seqs + 3, generator=g)[:num_seqs]
    args = [t.to(DEVICE) for t in (table, rows, computed, qsl)]
    ref = _outputs(int(qsl[-1]), num_seqs, width)
    out = _outputs(int(qsl[-1]), num_seqs, width)
    prepare_step(*args, num_actual, block_size, *ref)
    prepare_step_triton(*args, num_actual, block_size, *out)
    for a, b in zip(out, ref):
        assert torch.equal(a.cpu(), b.cpu())
