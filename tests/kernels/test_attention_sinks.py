"""Attention sinks (gpt-oss): one learned logit per query head in each softmax's denominator,
with no value.

The CPU reference (``reference.paged_attention(..., sinks=)``) against a direct softmax over
[logits, sink], as transformers' eager gpt-oss attention computes it; then the Triton kernels
(the paged decode / mixed kernel, split-K included, and the TMA prefill kernel) against the
reference. The Triton cases run on CUDA, or on CPU under TRITON_INTERPRET=1 (small shapes),
and are skipped otherwise.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from pagedlm.kernels import reference

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_HAS_TRITON = torch.cuda.is_available() or _INTERPRET
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter computes tl.dot on bf16 wrongly (see test_triton_kernels.py): fp16 there.
KERNEL_DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16
needs_triton = pytest.mark.skipif(not _HAS_TRITON, reason="Triton kernels need CUDA (or TRITON_INTERPRET=1)")


def _batch(q_lens, seq_lens, num_q_heads, num_kv_heads, head_dim, block_size, dtype, seed):
    """Scattered blocks, block 0 and every unowned position NaN (a stray read shows)."""
    g = torch.Generator().manual_seed(seed)
    blocks_per_seq = [math.ceil(s / block_size) for s in seq_lens]
    num_blocks = 1 + sum(blocks_per_seq) + 2
    tables = torch.zeros(len(seq_lens), max(blocks_per_seq) + 1, dtype=torch.int32)
    ids = torch.randperm(num_blocks - 1, generator=g) + 1
    kv = torch.full((2, num_blocks, block_size, num_kv_heads, head_dim), float("nan"))
    flat = kv.view(2, -1, num_kv_heads, head_dim)
    used = 0
    for b, (n, seq_len) in enumerate(zip(blocks_per_seq, seq_lens)):
        tables[b, :n] = ids[used : used + n].int()
        used += n
        pos = torch.arange(seq_len)
        slots = tables[b, pos // block_size].long() * block_size + pos % block_size
        flat[:, slots] = torch.randn(2, seq_len, num_kv_heads, head_dim, generator=g)
    query = torch.randn(sum(q_lens), num_q_heads, head_dim, generator=g)
    qsl = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    qsl[1:] = torch.cumsum(torch.tensor(q_lens), 0)
    # Sinks from well below to well above the logits: some heads barely notice, some give most weight away.
    sinks = torch.linspace(-3.0, 4.0, num_q_heads)[torch.randperm(num_q_heads, generator=g)]
    return query.to(dtype), kv.to(dtype), qsl, torch.tensor(seq_lens, dtype=torch.int32), tables, sinks


def _direct(query, kv, qsl, seq_lens, tables, scale, sinks, window=None):
    """Per sequence and head: softmax over [scaled logits, sink], sink column dropped."""
    out = torch.empty(query.shape, dtype=torch.float32)
    block_size = kv.shape[2]
    group = query.shape[1] // kv.shape[3]
    for b in range(len(seq_lens)):
        start, end, seq_len = int(qsl[b]), int(qsl[b + 1]), int(seq_lens[b])
        pos = torch.arange(seq_len)
        slots_b, offs = tables[b, pos // block_size].long(), pos % block_size
        k = kv[0].float()[slots_b, offs].repeat_interleave(group, 1)  # [L, Hq, D]
        v = kv[1].float()[slots_b, offs].repeat_interleave(group, 1)
        q = query[start:end].float()
        q_pos = torch.arange(seq_len - (end - start), seq_len).unsqueeze(1)
        allowed = pos.unsqueeze(0) <= q_pos
        if window is not None:
            allowed &= pos.unsqueeze(0) > q_pos - window
        logits = torch.einsum("qhd,khd->hqk", q, k) * scale
        logits = logits.masked_fill(~allowed, float("-inf"))
        sink = sinks.float().view(-1, 1, 1).expand(-1, logits.shape[1], 1)
        probs = torch.cat([logits, sink], -1).softmax(-1)[..., :-1]
        out[start:end] = torch.einsum("hqk,khd->qhd", probs, v)
    return out


CPU_CASES = {
    # name: (q_lens, seq_lens): decodes, a fresh prefill, a chunk after a cached prefix, mixed
    "decode": ([1, 1, 1], [1, 9, 40]),
    "prefill": ([13], [13]),
    "mixed": ([1, 7, 1, 20], [5, 30, 17, 20]),
}


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_reference_sinks_match_direct_softmax(case, window):
    q_lens, seq_lens = CPU_CASES[case]
    query, kv, qsl, lens, tables, sinks = _batch(q_lens, seq_lens, 8, 2, 16, 4, torch.float32, seed=len(case))
    scale = 16**-0.5
    clean = torch.nan_to_num(kv)
    out = reference.paged_attention(query, clean, qsl, lens, tables, max(q_lens), max(seq_lens), scale, window,
                                    sinks=sinks)
    torch.testing.assert_close(out, _direct(query, clean, qsl, lens, tables, scale, sinks, window),
                               rtol=1e-5, atol=1e-5)
    plain = reference.paged_attention(query, clean, qsl, lens, tables, max(q_lens), max(seq_lens), scale, window)
    assert (out - plain).abs().max() > 1e-2  # the sinks change the result
    # Sinks at -inf are no sinks at all.
    none = reference.paged_attention(query, clean, qsl, lens, tables, max(q_lens), max(seq_lens), scale, window,
                                     sinks=torch.full_like(sinks, float("-inf")))
    torch.testing.assert_close(none, plain, rtol=1e-5, atol=1e-5)


def test_attention_layer_loads_and_uses_sinks():
    """The layer's ``sinks`` parameter (this rank's heads) reaches paged_attention."""
    from pagedlm.layers.attention import Attention

    layer = Attention(4, 16, 2, 0.25, sinks=True)
    assert layer.sinks is not None and layer.sinks.shape == (4,) and layer.sinks.dtype == torch.float32
    layer.sinks.weight_loader(layer.sinks, torch.tensor([0.5, -1.0, 2.0, 3.0], dtype=torch.bfloat16))
    assert layer.sinks.tolist() == [0.5, -1.0, 2.0, 3.0]
    assert Attention(4, 16, 2, 0.25).sinks is None


def _rel_err(out, ref):
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm()).item()


# Small shapes: the interpreter runs every program in Python.
KERNEL_CASES = {
    "decode": ([1, 1, 1], [1, 20, 70]),
    "mixed": ([1, 9, 1, 24], [5, 40, 33, 24]),
}


@needs_triton
@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_paged_kernel_sinks(case, window):
    from pagedlm.kernels import triton_ops

    q_lens, seq_lens = KERNEL_CASES[case]
    query, kv, qsl, lens, tables, sinks = _batch(q_lens, seq_lens, 4, 2, 32, 16, KERNEL_DTYPE, seed=3)
    scale = 32**-0.5
    expected = reference.paged_attention(query.float(), torch.nan_to_num(kv.float()), qsl, lens, tables,
                                         max(q_lens), max(seq_lens), scale, window, sinks=sinks)
    dev = [t.to(DEVICE) for t in (query, kv, qsl, lens, tables, sinks)]
    out = triton_ops.paged_attention(dev[0], dev[1], dev[2], dev[3], dev[4], max(q_lens), max(seq_lens), scale,
                                     window, sinks=dev[5])
    assert _rel_err(out, expected) < 1e-2
    plain = reference.paged_attention(query.float(), torch.nan_to_num(kv.float()), qsl, lens, tables,
                                      max(q_lens), max(seq_lens), scale, window)
    assert _rel_err(plain, expected) > 0.05


@needs_triton
@pytest.mark.parametrize("num_segments", [1, 3])
def test_decode_kernel_split_k_counts_the_sink_once(num_segments):
    """Split-K: only segment 0 starts from the sink; the combine must not count it per segment."""
    from pagedlm.kernels.triton_attention import AttentionConfig, paged_attention_with_config

    q_lens, seq_lens = [1, 1], [70, 45]
    query, kv, qsl, lens, tables, sinks = _batch(q_lens, seq_lens, 4, 2, 32, 16, KERNEL_DTYPE, seed=5)
    scale = 32**-0.5
    expected = reference.paged_attention(query.float(), torch.nan_to_num(kv.float()), qsl, lens, tables, 1,
                                         max(seq_lens), scale, sinks=sinks)
    config = AttentionConfig(block_m=16, tile_n=16, num_warps=4, num_stages=2, num_segments=num_segments)
    dev = [t.to(DEVICE) for t in (query, kv, qsl, lens, tables, sinks)]
    out = paged_attention_with_config(dev[0], dev[1], dev[2], dev[3], dev[4], 1, max(seq_lens), scale, None, config,
                                      sinks=dev[5])
    assert _rel_err(out, expected) < 1e-2


@needs_triton
def test_prefill_kernel_sinks():
    """The TMA prefill kernel (this step's keys read from K/V, a cached prefix through the
    block table) with sinks, on the prefill rows; the decode row left alone."""
    from pagedlm.kernels import triton_prefill_attention as prefill

    q_lens, seq_lens = [70, 1, 64], [90, 30, 64]
    query, kv, qsl, lens, tables, sinks = _batch(q_lens, seq_lens, 4, 2, 64, 16, KERNEL_DTYPE, seed=11)
    scale = 64**-0.5
    expected = reference.paged_attention(query.float(), torch.nan_to_num(kv.float()), qsl, lens, tables,
                                         max(q_lens), max(seq_lens), scale, sinks=sinks)
    keys, values = [], []
    for b, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens)):
        pos = torch.arange(seq_len - q_len, seq_len)
        blocks, offs = tables[b, pos // 16].long(), pos % 16
        keys.append(kv[0][blocks, offs])
        values.append(kv[1][blocks, offs])
    key, value = torch.cat(keys).flatten(1).to(DEVICE), torch.cat(values).flatten(1).to(DEVICE)
    dev = [t.to(DEVICE) for t in (query, kv, qsl, lens, tables, sinks)]
    if not prefill.supports(dev[0], key, value, dev[1], None, None):
        pytest.skip("the prefill kernel does not run here (needs compute capability 9.0+ or the interpreter)")
    out = torch.full_like(dev[0], 5.0)
    prefill.prefill_attention(out, dev[0], key, value, dev[1], dev[2], dev[3], dev[4], scale,
                              prefill.PrefillConfig(block_m=64, tile_n=32), sinks=dev[5])
    rows = torch.ones(query.shape[0], dtype=torch.bool)
    rows[70] = False  # the decode row
    assert (out[70].float() == 5.0).all()
    assert _rel_err(out[rows.to(out.device)], expected[rows]) < 1e-2
    # Through the dispatcher too (paged kernel for the decode row, prefill kernel for the rest)
    # when the step is big enough; here: the paged kernel for everything.
    from pagedlm.kernels import triton_ops

    whole = triton_ops.paged_attention(*dev[:5], max(q_lens), max(seq_lens), scale, key=key, value=value,
                                       sinks=dev[5])
    assert _rel_err(whole, expected) < 1e-2
