"""Paged attention in Triton for mixed batches (prefill chunks, prefill after a cached prefix,
decodes) in one launch, plus a split-K (flash-decoding) variant for decode batches too small
to fill the GPU.

One program owns a tile of BLOCK_M rows = BLOCK_Q query tokens x the QUERIES_PER_KV query
heads that share one KV head (GQA packing), so every K/V tile it gathers through the block
table is read once for the whole group. KV tiles are TILE_N tokens wide (several pages when
the block size is small). Softmax is the online (flash-attention) form in float32, base 2.

Program -> sequence mapping without a host sync: sequence b owns the q-block ids
[query_start_loc[b] // BLOCK_Q + b, ...); that range holds at least cdiv(q_len, BLOCK_Q) ids,
so a grid of num_tokens // BLOCK_Q + num_seqs programs covers every sequence and a binary
search over query_start_loc finds a program's sequence. Spare programs exit at once. (Running
a sequence's last query blocks first, the longest programs ahead, measured 12% slower on an
H200 at 4 x 4,096 tokens.)

Causal masking costs only where it bites: the KV tiles that every row of a program sees whole
(those at or before its first query position) run without masks, bounds or guards, the scale
folded into one multiply-add per logit; the diagonal tiles (and every tile of a sliding window
or a decode launch) take the masked form.

Three launch modes of the one kernel (MODE):
  0 every row, one launch (BLOCK_M sized for prefill; decodes ride along).
  1 decode rows only: program i is sequence i, sequences whose q_len != 1 exit. Small BLOCK_M
    (just the GQA group), optional split-K. Used alone when max_query_len == 1.
  2 multi-token rows only (q_len == 1 exits). Mode 1 then mode 2 is an option for mixed
    batches (``decode_config``); measured on H100 it was slower than one mode-0 launch, where
    the decode programs overlap the prefill programs, so the default is mode 0.

fp8 KV cache (float8_e4m3fn / e5m2): K/V tiles are loaded as fp8 and widened to the query's
dtype (exact); the per-tensor k_scale folds into the logit scale and v_scale multiplies the
accumulated output, so the inner loop does no extra work.

Split-K: axis 2 of the grid cuts each sequence's KV tiles into segments of
``tiles_per_segment``; each program writes an unnormalised partial output with its running
max and sum, and a second kernel combines the segments (log-sum-exp weights).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedlm.attention.kv_cache_dtype import is_fp8
from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue

_LOG2E = 1.4426950408889634
# A step's prefill rows go to triton_prefill_attention (when it supports the step) from these
# sizes on: the longest query and the tokens beyond one per sequence. H200 timings
# (benchmarks/gpu_prefill_attention.py, BENCHMARKS.md): 1.13-1.39x from 2 x 1,024 tokens up,
# 0.70-0.92x at 512 tokens or less (1 x 512, 4 x 128, a 512-token chunk beside 128 decodes),
# where the one mixed launch of this module wins.
PREFILL_KERNEL_MIN_QUERY_LEN = 256
PREFILL_KERNEL_MIN_TOKENS = 1024
# Split-K: at most this many segments per sequence (the combine kernel holds them all).
_MAX_SEGMENTS = 64


@dataclass(frozen=True, slots=True)
class AttentionConfig:
    block_m: int  # rows per program: query tokens x query heads of one KV head
    tile_n: int  # KV tokens per inner iteration
    num_warps: int
    num_stages: int
    num_segments: int = 1  # split-K segments per sequence (decode only); 1 = no split


@triton.jit
def _find_seq_idx(query_start_loc_ptr, q_block_idx, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest b with query_start_loc[b] // BLOCK_Q + b <= q_block_idx."""
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first_block = tl.load(query_start_loc_ptr + mid).to(tl.int32) // BLOCK_Q + mid
        if first_block <= q_block_idx:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _locate_queries(query_start_loc_ptr, num_seqs, BLOCK_Q: tl.constexpr, MODE: tl.constexpr):
    """This program's sequence, its block of queries within it, where the sequence's queries
    start and how many there are, and whether the program has nothing to do (past the
    sequence's queries; in MODE 1 a sequence that is not a decode, in MODE 2 one that is)."""
    if MODE == 1:
        seq_idx = tl.program_id(0)
        q_block = 0
    else:
        seq_idx = _find_seq_idx(query_start_loc_ptr, tl.program_id(0), num_seqs, BLOCK_Q)
        q_block = tl.program_id(0) - (tl.load(query_start_loc_ptr + seq_idx).to(tl.int32) // BLOCK_Q + seq_idx)
    q_start = tl.load(query_start_loc_ptr + seq_idx).to(tl.int32)
    q_len = tl.load(query_start_loc_ptr + seq_idx + 1).to(tl.int32) - q_start
    skip = q_block * BLOCK_Q >= q_len
    if MODE == 1:
        skip = q_len != 1
    if MODE == 2:
        skip = skip | (q_len == 1)
    return seq_idx, q_block, q_start, q_len, skip


@triton.jit
def _tile_range(context_len, q_block, q_len, tiles_per_segment, BLOCK_Q: tl.constexpr, TILE_N: tl.constexpr,
                SLIDING_WINDOW: tl.constexpr, SPLIT: tl.constexpr, WHOLE_TILES: tl.constexpr):
    """The KV tiles [tile_start, tile_end) this program visits (keys below kv_end can be seen
    by some row; a window or a split-K segment cuts the range) and, with WHOLE_TILES, the end
    of those that lie wholly at or before its first query position: every row sees all of
    their keys, so they run unmasked. The rest (the diagonal, the sequence's end) run masked."""
    kv_end = context_len + tl.minimum(q_block * BLOCK_Q + BLOCK_Q, q_len)
    tile_start = 0
    if SLIDING_WINDOW > 0:
        tile_start = tl.maximum(context_len + q_block * BLOCK_Q - SLIDING_WINDOW + 1, 0) // TILE_N
    tile_end = tl.cdiv(kv_end, TILE_N)
    if SPLIT:
        segment = tl.program_id(2)
        tile_start = tl.maximum(tile_start, segment * tiles_per_segment)
        tile_end = tl.minimum(tile_end, (segment + 1) * tiles_per_segment)
    full_end = tile_start
    if WHOLE_TILES:
        full_end = tl.minimum(tl.maximum((context_len + q_block * BLOCK_Q + 1) // TILE_N, tile_start), tile_end)
    return kv_end, tile_start, full_end, tile_end


@triton.jit
def _softmax_step(acc, m_i, l_i, q, k, v, q_pos, key_pos, scale_log2e, SLIDING_WINDOW: tl.constexpr,
                  SOFTCAP: tl.constexpr, MASKED: tl.constexpr):
    """One KV tile (k, v: [TILE_N, D] at absolute positions key_pos) into the running max m_i,
    sum l_i and unnormalised output acc of the rows at positions q_pos. MASKED: a row sees
    the keys at or before its own position (and inside its window); otherwise the caller
    guarantees every row sees every key of the tile."""
    s = tl.dot(q, tl.trans(k.to(q.dtype)))  # [BLOCK_M, TILE_N], unscaled
    if MASKED or SOFTCAP > 0:
        s = s * scale_log2e
        if SOFTCAP > 0:
            # softcap * tanh(logit / softcap) in the base-2 domain; tanh(x) = 1 - 2 / (e^2x + 1)
            # saturates to +-1 without overflow trouble (e^2x -> inf or 0).
            x = s * (1.0 / (SOFTCAP * 1.4426950408889634))
            t = 1.0 - 2.0 / (tl.exp2(x * 2.8853900817779268) + 1.0)
            s = t * (SOFTCAP * 1.4426950408889634)
        if MASKED:
            allowed = key_pos[None, :] <= q_pos[:, None]
            if SLIDING_WINDOW > 0:
                allowed = allowed & (key_pos[None, :] > q_pos[:, None] - SLIDING_WINDOW)
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # A row with nothing visible yet keeps m = -inf; use 0 as its offset so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(s, axis=1) * scale_log2e)
        m_safe = m_new
        p = tl.exp2(s * scale_log2e - m_new[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
    return acc, m_new, l_i


@triton.jit
def _attend_tile(acc, m_i, l_i, q, q_pos, tile, kv_end, table_row, k_cache_ptr, v_cache_ptr, head_off, offs_d,
                 d_valid, stride_cblk, stride_ctok, scale_log2e, BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr,
                 SLIDING_WINDOW: tl.constexpr, SOFTCAP: tl.constexpr, MASKED: tl.constexpr,
                 EVEN_D: tl.constexpr):
    """One KV tile of the online softmax: K/V gathered through the block table, logits in the
    base-2 domain. MASKED: keys past kv_end, after a row's query or before its window are
    dropped. Otherwise every key of the tile is visible to every row (the caller's range
    guarantees it), so the tile takes no bounds, no mask and no guard for rows that see
    nothing yet, and the scale folds into one multiply-add per logit."""
    key_pos = tile * TILE_N + tl.arange(0, TILE_N)
    if MASKED:
        key_valid = key_pos < kv_end
        block = tl.load(table_row + key_pos // BLOCK_SIZE, mask=key_valid, other=0).to(tl.int64)
    else:
        block = tl.load(table_row + key_pos // BLOCK_SIZE).to(tl.int64)
    kv_off = block * stride_cblk + (key_pos % BLOCK_SIZE).to(tl.int64) * stride_ctok + head_off
    k_ptrs = k_cache_ptr + kv_off[:, None] + offs_d[None, :]
    v_ptrs = v_cache_ptr + kv_off[:, None] + offs_d[None, :]
    if MASKED:
        kv_mask = key_valid[:, None] & d_valid[None, :]
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    elif EVEN_D:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    else:
        k = tl.load(k_ptrs, mask=d_valid[None, :], other=0.0)
        v = tl.load(v_ptrs, mask=d_valid[None, :], other=0.0)
    return _softmax_step(acc, m_i, l_i, q, k, v, q_pos, key_pos, scale_log2e, SLIDING_WINDOW, SOFTCAP, MASKED)


@triton.jit
def _store_rows(acc, m_i, l_i, seq_idx, token, head, row_valid, offs_d, d_valid, out_ptr, part_out_ptr,
                part_max_ptr, part_sum_ptr, num_q_heads, num_segments, stride_ot, stride_oh, HEAD_PAD: tl.constexpr,
                SPLIT: tl.constexpr):
    """The program's rows: normalised into the output, or (SPLIT) this segment's unnormalised
    sums with their running max and sum, for the combine kernel. Only decode launches split,
    one query per sequence, so the partial sums are kept per sequence, not per token: a step
    with a long prefill beside a few decodes needs no buffer the size of its tokens."""
    if SPLIT:
        part = (seq_idx.to(tl.int64) * num_q_heads + head) * num_segments + tl.program_id(2)  # [BLOCK_M]
        tl.store(part_max_ptr + part, m_i, mask=row_valid)
        tl.store(part_sum_ptr + part, l_i, mask=row_valid)
        tl.store(part_out_ptr + part[:, None] * HEAD_PAD + offs_d[None, :], acc, mask=row_valid[:, None])
    else:
        out = acc / l_i[:, None]
        tl.store(out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + offs_d[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & d_valid[None, :])


@triton.jit
def _init_with_sinks(m_i, l_i, sinks_ptr, head, SPLIT: tl.constexpr):
    """Attention sinks (gpt-oss): each row's softmax starts from its head's sink logit, as if
    one key of weight exp(sink) and value 0 came first (base 2: running max = sink * log2(e),
    sum = 1). Split-K: only segment 0 holds the sink, so the combine counts it once."""
    sink = tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
    m_init = sink
    l_init = l_i + 1.0
    if SPLIT:
        first = tl.program_id(2) == 0
        m_init = tl.where(first, sink, m_i)
        l_init = tl.where(first, l_init, l_i)
    return m_init, l_init


@triton.jit
def _query_rows(query_ptr, q_start, q_block, q_len, kv_head, offs_d, d_valid, stride_qt, stride_qh,
                QUERIES_PER_KV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr):
    """The program's rows: BLOCK_Q queries of the sequence times the QUERIES_PER_KV query heads
    that share kv_head. Returns their queries [BLOCK_M, HEAD_PAD] and, per row, the query's index
    within the sequence, its token, its head and whether the row is real."""
    offs_m = tl.arange(0, BLOCK_M)
    q_idx = q_block * BLOCK_Q + offs_m // QUERIES_PER_KV
    head = kv_head * QUERIES_PER_KV + offs_m % QUERIES_PER_KV
    row_valid = (q_idx < q_len) & (offs_m < BLOCK_Q * QUERIES_PER_KV)
    token = (q_start + q_idx).to(tl.int64)
    q = tl.load(query_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_valid[:, None] & d_valid[None, :], other=0.0)
    return q, q_idx, token, head, row_valid


# num_seqs == 1 must not become a compile-time constant (the binary search re-assigns it).
@triton.jit(do_not_specialize=["num_seqs", "tiles_per_segment", "num_segments"])
def _paged_attention_kernel(
    out_ptr, query_ptr, k_cache_ptr, v_cache_ptr,
    block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    part_out_ptr, part_max_ptr, part_sum_ptr, k_scale_ptr, v_scale_ptr, sinks_ptr,
    scale_log2e, num_seqs, num_q_heads, tiles_per_segment, num_segments,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_cblk, stride_ctok, stride_chead, stride_bt,
    QUERIES_PER_KV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE_N: tl.constexpr,
    SLIDING_WINDOW: tl.constexpr, MODE: tl.constexpr, SPLIT: tl.constexpr, SOFTCAP: tl.constexpr = 0.0,
    KV_FP8: tl.constexpr = False, HAS_SINKS: tl.constexpr = False, PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    kv_head = tl.program_id(1)
    seq_idx, q_block, q_start, q_len, skip = _locate_queries(query_start_loc_ptr, num_seqs, BLOCK_Q, MODE)
    if skip:
        return
    seq_len = tl.load(seq_lens_ptr + seq_idx).to(tl.int32)
    context_len = seq_len - q_len  # tokens cached before this step's queries

    offs_d = tl.arange(0, HEAD_PAD)
    d_valid = offs_d < HEAD_DIM
    q, q_idx, token, head, row_valid = _query_rows(query_ptr, q_start, q_block, q_len, kv_head, offs_d, d_valid,
                                                   stride_qt, stride_qh, QUERIES_PER_KV, BLOCK_M, BLOCK_Q)
    q_pos = context_len + q_idx  # absolute position of each row's query token
    if KV_FP8:
        # The cache holds K / k_scale: fold k_scale into the logit scale (q . k_fp8 is exact
        # in the query's dtype); v_scale multiplies the output once at the end.
        scale_log2e = scale_log2e * tl.load(k_scale_ptr)

    # Decode launches keep one loop: their segments are a tile or two, where a second pipelined
    # loop costs more than it saves; sliding windows mask every tile.
    WHOLE_TILES: tl.constexpr = SLIDING_WINDOW == 0 and MODE != 1
    kv_end, tile_start, full_end, tile_end = _tile_range(context_len, q_block, q_len, tiles_per_segment, BLOCK_Q,
                                                         TILE_N, SLIDING_WINDOW, SPLIT, WHOLE_TILES)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    if HAS_SINKS:
        m_i, l_i = _init_with_sinks(m_i, l_i, sinks_ptr, head, SPLIT)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], tl.float32)
    table_row = block_tables_ptr + seq_idx.to(tl.int64) * stride_bt
    head_off = kv_head.to(tl.int64) * stride_chead
    if WHOLE_TILES:
        for tile in range(tile_start, full_end):
            acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, q_pos, tile, kv_end, table_row, k_cache_ptr, v_cache_ptr,
                                         head_off, offs_d, d_valid, stride_cblk, stride_ctok, scale_log2e,
                                         BLOCK_SIZE, TILE_N, SLIDING_WINDOW, SOFTCAP, MASKED=False,
                                         EVEN_D=HEAD_PAD == HEAD_DIM)
        tile_start = full_end
    for tile in range(tile_start, tile_end):
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, q_pos, tile, kv_end, table_row, k_cache_ptr, v_cache_ptr,
                                     head_off, offs_d, d_valid, stride_cblk, stride_ctok, scale_log2e, BLOCK_SIZE,
                                     TILE_N, SLIDING_WINDOW, SOFTCAP, MASKED=True, EVEN_D=HEAD_PAD == HEAD_DIM)
    if KV_FP8:
        acc = acc * tl.load(v_scale_ptr)
    _store_rows(acc, m_i, l_i, seq_idx, token, head, row_valid, offs_d, d_valid, out_ptr, part_out_ptr,
                part_max_ptr, part_sum_ptr, num_q_heads, num_segments, stride_ot, stride_oh, HEAD_PAD, SPLIT)


@triton.jit
def _combine_segments_kernel(
    out_ptr, part_out_ptr, part_max_ptr, part_sum_ptr, query_start_loc_ptr,
    num_q_heads, num_segments, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, SEG_PAD: tl.constexpr, PDL: tl.constexpr = False,
):
    # One program per (sequence, query head); only decode rows (q_len == 1) were split.
    pdl_prologue(PDL)
    seq_idx = tl.program_id(0)
    head = tl.program_id(1)
    q_start = tl.load(query_start_loc_ptr + seq_idx).to(tl.int64)
    q_len = tl.load(query_start_loc_ptr + seq_idx + 1).to(tl.int64) - q_start
    if q_len != 1:
        return
    offs_s = tl.arange(0, SEG_PAD)
    offs_d = tl.arange(0, HEAD_PAD)
    seg_valid = offs_s < num_segments
    part = (seq_idx.to(tl.int64) * num_q_heads + head) * num_segments + offs_s
    m = tl.load(part_max_ptr + part, mask=seg_valid, other=float("-inf"))
    l = tl.load(part_sum_ptr + part, mask=seg_valid, other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - m_max))
    acc = tl.load(part_out_ptr + part[:, None] * HEAD_PAD + offs_d[None, :], mask=seg_valid[:, None], other=0.0)
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(l * w, axis=0)
    tl.store(out_ptr + q_start * stride_ot + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _device_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # Triton's CPU interpreter: any plausible number
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


def default_config(
    num_seqs: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
    max_query_len: int, max_seq_len: int, device: torch.device, num_tokens: int | None = None,
) -> AttentionConfig:
    """Tiles picked from sweeps on an H100 (benchmarks/kernels_bench.py, Llama-3.1-8B shapes).

    Decode (max_query_len <= 1): BLOCK_M = the GQA group padded to 16; a batch with fewer
    (sequence, KV head) programs than 2x the SMs splits each context into segments so that
    about 4 programs per SM run, with 32-token tiles; otherwise 64-token tiles, no split.
    Otherwise 64-row query tiles, or 16 rows when the multi-token part is small (few query
    tokens per sequence, or no more prefill tokens than sequences): the decodes in a mixed
    batch then keep lean tiles."""
    group = num_q_heads // num_kv_heads
    head_pad = max(16, triton.next_power_of_2(head_dim))
    tile_n = 64 if head_pad <= 128 else 32
    if max_query_len <= 1:
        block_m = max(16, triton.next_power_of_2(group))
        num_sms = _device_sms(device)
        programs = max(1, num_seqs * num_kv_heads)
        split_tile_n = tile_n // 2
        num_tiles = triton.cdiv(max(max_seq_len, 1), split_tile_n)
        if programs < 2 * num_sms and num_tiles > 2:
            num_segments = min(triton.cdiv(4 * num_sms, programs), num_tiles, _MAX_SEGMENTS)
            return AttentionConfig(block_m, split_tile_n, num_warps=4, num_stages=3, num_segments=num_segments)
        return AttentionConfig(block_m, tile_n, num_warps=4, num_stages=2)
    few_prefill_tokens = num_tokens is not None and num_tokens - num_seqs <= num_seqs
    block_m = 16 if max_query_len * group <= 16 or few_prefill_tokens else 64
    block_m = max(block_m, triton.next_power_of_2(group))
    num_warps = 8 if block_m * head_pad > 8192 else 4
    return AttentionConfig(block_m, tile_n, num_warps=num_warps, num_stages=2)


def paged_attention_with_config(
    query: torch.Tensor,  # [T, Hq, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    query_start_loc: torch.Tensor,  # [B + 1] int32/int64
    seq_lens: torch.Tensor,  # [B] int32/int64
    block_tables: torch.Tensor,  # [B, max_blocks] int32/int64
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    sliding_window: int | None,
    config: AttentionConfig,
    decode_config: AttentionConfig | None = None,
    softcap: float | None = None,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """max_query_len <= 1: one decode launch with ``config``. Otherwise one launch over every
    row with ``config``, or, given ``decode_config``, a decode launch for the q_len == 1 rows
    and a launch with ``config`` for the rest. An fp8 cache is read as fp8 * k_scale / v_scale
    ([1] float32 device tensors; None = 1.0). ``sinks`` [Hq]: attention-sink logits (gpt-oss)."""
    num_tokens, num_q_heads, head_dim = query.shape
    out = torch.empty((num_tokens, num_q_heads, head_dim), dtype=query.dtype, device=query.device)
    if num_tokens == 0 or seq_lens.shape[0] == 0:
        return out
    _check_layout(query, kv_cache, block_tables)
    args = (out, query, kv_cache, query_start_loc, seq_lens, block_tables, max_seq_len, scale, sliding_window or 0,
            float(softcap or 0.0), _scale_or_one(k_scale, kv_cache), _scale_or_one(v_scale, kv_cache), sinks)
    if max_query_len <= 1:
        _launch(*args, config, mode=1)
    elif decode_config is None:
        _launch(*args, config, mode=0)
    else:
        _launch(*args, decode_config, mode=1)
        _launch(*args, config, mode=2)
    return out


def _launch(out, query, kv_cache, query_start_loc, seq_lens, block_tables, max_seq_len, scale, sliding_window,
            softcap: float, k_scale: torch.Tensor, v_scale: torch.Tensor, sinks: torch.Tensor | None,
            config: AttentionConfig, mode: int) -> None:
    num_tokens, num_q_heads, head_dim = query.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    num_seqs = seq_lens.shape[0]
    group = num_q_heads // num_kv_heads
    head_pad = max(16, triton.next_power_of_2(head_dim))
    block_m = max(config.block_m, triton.next_power_of_2(group))
    block_q = block_m // group
    num_segments, tiles_per_segment = 1, 0
    if mode == 1 and config.num_segments > 1:
        num_tiles = triton.cdiv(max(max_seq_len, 1), config.tile_n)
        tiles_per_segment = triton.cdiv(num_tiles, config.num_segments)
        num_segments = triton.cdiv(num_tiles, tiles_per_segment)
    split = num_segments > 1
    if split:
        # per sequence: a split launch has one query per sequence (decode rows only)
        part_out = torch.empty((num_seqs, num_q_heads, num_segments, head_pad), dtype=torch.float32, device=query.device)
        part_max = torch.empty((num_seqs, num_q_heads, num_segments), dtype=torch.float32, device=query.device)
        part_sum = torch.empty_like(part_max)
    else:
        part_out = part_max = part_sum = out  # unused
    grid_q = num_seqs if mode == 1 else num_tokens // block_q + num_seqs
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _paged_attention_kernel[(grid_q, num_kv_heads, num_segments)](
        out, query, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
        part_out, part_max, part_sum, k_scale, v_scale, k_scale if sinks is None else sinks,
        scale * _LOG2E, num_seqs, num_q_heads, tiles_per_segment, num_segments,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        QUERIES_PER_KV=group, BLOCK_M=block_m, BLOCK_Q=block_q,
        HEAD_DIM=head_dim, HEAD_PAD=head_pad, BLOCK_SIZE=block_size, TILE_N=config.tile_n,
        SLIDING_WINDOW=sliding_window, MODE=mode, SPLIT=split, SOFTCAP=softcap, KV_FP8=is_fp8(kv_cache.dtype),
        HAS_SINKS=sinks is not None, num_warps=config.num_warps, num_stages=config.num_stages, **launch_kwargs(),
    )
    if split:
        _combine_segments_kernel[(num_seqs, num_q_heads)](
            out, part_out, part_max, part_sum, query_start_loc,
            num_q_heads, num_segments, out.stride(0), out.stride(1),
            HEAD_DIM=head_dim, HEAD_PAD=head_pad, SEG_PAD=triton.next_power_of_2(num_segments), num_warps=4,
            **launch_kwargs(),
        )


@functools.lru_cache(maxsize=8)
def _unit_scale(device: torch.device) -> torch.Tensor:
    # Made once per device: a fresh tensor per call could not be captured in a CUDA graph.
    return torch.ones(1, dtype=torch.float32, device=device)


def _scale_or_one(scale: torch.Tensor | None, kv_cache: torch.Tensor) -> torch.Tensor:
    """The scale the kernel reads (only an fp8 cache reads it)."""
    return scale if scale is not None else _unit_scale(kv_cache.device)


def _check_layout(query: torch.Tensor, kv_cache: torch.Tensor, block_tables: torch.Tensor) -> None:
    if query.stride(-1) != 1 or kv_cache.stride(-1) != 1 or block_tables.stride(-1) != 1:
        raise ValueError("paged_attention needs unit stride along head_dim (query, kv_cache) and along block_tables rows")
    if query.shape[1] % kv_cache.shape[3]:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {kv_cache.shape[3]} KV heads")


def paged_attention(
    query: torch.Tensor,  # [T, Hq, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    query_start_loc: torch.Tensor,  # [B + 1] int32
    seq_lens: torch.Tensor,  # [B] int32: context length including this step's tokens
    block_tables: torch.Tensor,  # [B, max_blocks] int32
    max_query_len: int,
    max_seq_len: int,
    scale: float,
    sliding_window: int | None = None,
    softcap: float | None = None,
    k_scale: torch.Tensor | None = None,  # [1] float32: an fp8 cache holds K / k_scale (None = 1.0)
    v_scale: torch.Tensor | None = None,  # [1] float32: likewise V / v_scale
    key: torch.Tensor | None = None,  # [T, Hkv * D]: this step's keys as written to the cache
    value: torch.Tensor | None = None,  # [T, Hkv * D]: likewise its values
    sinks: torch.Tensor | None = None,  # [Hq]: attention-sink logits (gpt-oss)
) -> torch.Tensor:
    """Same contract as ``reference.paged_attention``; never syncs with the host.
    max_query_len must bound every sequence's query length (== 1 selects the decode path)
    and max_seq_len every seq_len (the split-K decode path sizes its segments by it).
    A step with enough prefill work and this step's ``key`` / ``value`` runs its decode rows
    here and its prefill rows in ``triton_prefill_attention`` (TMA reads of the new keys)."""
    num_seqs = seq_lens.shape[0]
    if max_query_len >= PREFILL_KERNEL_MIN_QUERY_LEN and query.shape[0] - num_seqs >= PREFILL_KERNEL_MIN_TOKENS:
        from pagedlm.kernels import triton_prefill_attention as prefill  # noqa: PLC0415 - it imports this module

        if prefill.supports(query, key, value, kv_cache, sliding_window, softcap):
            _check_layout(query, kv_cache, block_tables)
            decode = default_config(num_seqs, query.shape[1], kv_cache.shape[3], query.shape[2], 1, max_seq_len,
                                    query.device, num_tokens=num_seqs)
            out = paged_attention_with_config(query, kv_cache, query_start_loc, seq_lens, block_tables, 1,
                                              max_seq_len, scale, None, decode, sinks=sinks)  # decode rows only
            prefill.prefill_attention(out, query, key, value, kv_cache, query_start_loc, seq_lens, block_tables,
                                      scale, prefill.default_config(max_seq_len), sinks=sinks)
            return out
    config = default_config(
        num_seqs, query.shape[1], kv_cache.shape[3], query.shape[2], max_query_len, max_seq_len,
        query.device, num_tokens=query.shape[0],
    )
    return paged_attention_with_config(
        query, kv_cache, query_start_loc, seq_lens, block_tables, max_query_len, max_seq_len, scale,
        sliding_window, config, softcap=softcap, k_scale=k_scale, v_scale=v_scale, sinks=sinks,
    )


__all__ = ["AttentionConfig", "default_config", "paged_attention", "paged_attention_with_config"]
