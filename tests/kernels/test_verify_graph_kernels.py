"""The Triton kernels under a verify CUDA graph's padded layout (pagedlm.spec_decode.
verify_graphs): size x query_len tokens, 2 x size sequence slots, the real sequences first
with 1..query_len tokens each, padding sequences after. Step preparation matches its
reference, padding writes no KV, and attention over the padded layout gives the real rows
of the unpadded batch, also when captured once with all-padding metadata and replayed
(CUDA). Runs on CUDA, or on CPU with TRITON_INTERPRET=1."""

from __future__ import annotations

import os

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from pagedlm.kernels import reference, triton_ops  # noqa: E402
from pagedlm.kernels.step_prep import prepare_step, prepare_step_triton  # noqa: E402
from pagedlm.worker.step_buffers import padding_query_starts  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
QUERY_LEN, SIZE, BS, WIDTH = 4, 8, 16, 16  # 1 + k query tokens; graph batch size; block size; blocks per row
Q_HEADS, KV_HEADS, HEAD_DIM = 8, 2, 64
DTYPE = torch.float16  # the interpreter's bf16 dot is unreliable (see test_triton_kernels)


def verify_layout(q_lens: list[int], computed: list[int]) -> dict[str, torch.Tensor]:
    """Host inputs of a padded verify step (rows, computed counts, query starts) over a
    persistent block table whose rows are shuffled."""
    g = torch.Generator().manual_seed(len(q_lens))
    n_seq, n_tok = len(q_lens), sum(q_lens)
    num_tokens, num_seqs = SIZE * QUERY_LEN, 2 * SIZE
    qsl = torch.zeros(num_seqs + 1, dtype=torch.int64)
    qsl[1 : n_seq + 1] = torch.tensor(q_lens).cumsum(0)
    qsl[n_seq + 1 :] = torch.from_numpy(padding_query_starts(n_tok, num_seqs - n_seq, num_tokens, QUERY_LEN))
    table = (torch.randperm(SIZE * WIDTH, generator=g)[: SIZE * WIDTH] + 1).view(SIZE, WIDTH).int()
    rows = torch.zeros(num_seqs, dtype=torch.int64)
    rows[:n_seq] = torch.randperm(SIZE, generator=g)[:n_seq]
    num_computed = torch.zeros(num_seqs, dtype=torch.int64)
    num_computed[:n_seq] = torch.tensor(computed)
    return dict(table=table, rows=rows, computed=num_computed, qsl=qsl, n_seq=n_seq, n_tok=n_tok)


def prepared(layout: dict, impl) -> tuple[torch.Tensor, ...]:
    num_tokens, num_seqs = SIZE * QUERY_LEN, 2 * SIZE
    out = (torch.full((num_tokens,), -7, dtype=torch.int64, device=DEVICE),
           torch.full((num_tokens,), -7, dtype=torch.int64, device=DEVICE),
           torch.full((num_seqs,), -7, dtype=torch.int64, device=DEVICE),  # int64: the step buffers' views
           torch.full((num_seqs, WIDTH), -7, dtype=torch.int64, device=DEVICE))
    args = [layout[k].to(DEVICE) for k in ("table", "rows", "computed", "qsl")]
    impl(*args, layout["n_seq"], BS, *out)
    return out


LAYOUTS = {
    "mixed drafts": ([4, 1, 2, 4, 3], [40, 7, 100, 15, 64]),
    "no drafts but one": ([1, 1, 1, 1, 1, 1, 1, 2], [3, 17, 33, 90, 5, 120, 60, 1]),
    "full": ([4] * SIZE, [10 * i + 5 for i in range(SIZE)]),
    "one request": ([3], [200]),
}


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_step_prep_over_a_padded_verify_layout(layout_name: str) -> None:
    layout = verify_layout(*LAYOUTS[layout_name])
    ours = prepared(layout, prepare_step_triton)
    ref = prepared(layout, prepare_step)
    for a, b in zip(ours, ref):
        assert torch.equal(a.cpu(), b.cpu())
    slots = ours[1].cpu()
    assert (slots[layout["n_tok"] :] == -1).all() and (slots[: layout["n_tok"]] >= 0).all()


def _cache_and_query() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    num_blocks = SIZE * WIDTH + 1
    kv = torch.randn(2, num_blocks, BS, KV_HEADS, HEAD_DIM, generator=g).to(DTYPE)
    query = torch.randn(SIZE * QUERY_LEN, Q_HEADS, HEAD_DIM, generator=g).to(DTYPE)
    return kv.to(DEVICE), query.to(DEVICE)


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
def test_attention_over_a_padded_verify_layout(layout_name: str) -> None:
    """The launch a verify graph captures: max_query_len = query_len, the longest context as
    max_seq_len, grid from size x query_len tokens and 2 x size sequences."""
    layout = verify_layout(*LAYOUTS[layout_name])
    positions, slots, seq_lens, tables = prepared(layout, prepare_step_triton)
    kv, query = _cache_and_query()
    n_seq, n_tok, scale = layout["n_seq"], layout["n_tok"], HEAD_DIM**-0.5
    qsl = layout["qsl"].to(DEVICE)
    out = triton_ops.paged_attention(query, kv, qsl, seq_lens, tables, QUERY_LEN, WIDTH * BS, scale)
    expected = reference.paged_attention(
        query[:n_tok].float().cpu(), kv.float().cpu(), layout["qsl"][: n_seq + 1], seq_lens[:n_seq].cpu(),
        tables[:n_seq].cpu(), int(torch.diff(layout["qsl"][: n_seq + 1]).max()), int(seq_lens[:n_seq].max()), scale)
    got = out[:n_tok].float().cpu()
    assert torch.isfinite(out.float()).all()  # padding rows too: every token is in some sequence
    assert ((got - expected).norm() / expected.norm()).item() < 1e-2


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need CUDA")
def test_verify_attention_captured_with_padding_replays_real_layouts() -> None:
    """Captured once over all-padding metadata (as VerifyGraphRunner.capture does), replayed
    over each real layout written into the same tensors."""
    blank = verify_layout([], [])
    positions, slots, seq_lens, tables = prepared(blank, prepare_step_triton)
    kv, query = _cache_and_query()
    qsl, scale = blank["qsl"].to(DEVICE), HEAD_DIM**-0.5
    triton_ops.paged_attention(query, kv, qsl, seq_lens, tables, QUERY_LEN, WIDTH * BS, scale)  # compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = triton_ops.paged_attention(query, kv, qsl, seq_lens, tables, QUERY_LEN, WIDTH * BS, scale)
    for q_lens, computed in LAYOUTS.values():
        layout = verify_layout(q_lens, computed)
        for dst, src in zip((positions, slots, seq_lens, tables), prepared(layout, prepare_step_triton)):
            dst.copy_(src)
        qsl.copy_(layout["qsl"].to(DEVICE))
        query.copy_(torch.randn_like(query))
        graph.replay()
        torch.cuda.synchronize()
        n_seq, n_tok = layout["n_seq"], layout["n_tok"]
        expected = reference.paged_attention(
            query[:n_tok].float().cpu(), kv.float().cpu(), layout["qsl"][: n_seq + 1], seq_lens[:n_seq].cpu(),
            tables[:n_seq].cpu(), max(q_lens), int(seq_lens[:n_seq].max()), scale)
        got = out[:n_tok].float().cpu()
        assert ((got - expected).norm() / expected.norm()).item() < 1e-2, q_lens
