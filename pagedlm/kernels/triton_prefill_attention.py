"""Causal attention for the prefill rows of a step (every sequence with more than one query
token), reading this step's own keys and values from the dense K/V the layer computed, not
through the block table.

Why a second kernel: with 16-token pages a 64-key tile is four gathers through the block
table, each thread computing its own addresses (``triton_attention``). This step's new keys
are contiguous rows of the layer's K/V tensors, so a tile of them is one TMA copy
(a ``TensorDescriptor`` load), and the program needs no addresses for them at all. On an
H200 (Llama-3.1-8B heads, causal) this reaches 73% of the bf16 matmul rate at 4 x 4,096
tokens where the paged kernel reaches 54% (BENCHMARKS.md).

One program: BLOCK_M query tokens (128, or 64 when no context passes 1,024) of one query
head (no GQA packing: the group's heads read the KV tiles from L2). Keys come in three runs:
  1. the cached prefix (positions before this step's tokens: prefix-cache hits, earlier
     chunks of a chunked prefill), gathered through the block table as the paged kernel does,
     every tile visible to every row; a last partial tile masked;
  2. this step's keys before the program's first query token (TMA, unmasked);
  3. the diagonal: this step's keys inside the program's own query block (TMA, causal mask).
Decode rows (one query token) are left to ``triton_attention``'s decode launch. Attention
sinks (gpt-oss, ``HAS_SINKS``) seed each row's running max and sum with its head's sink.

Used through ``triton_attention.paged_attention`` when ``supports`` holds (compute capability
9.0+ or the interpreter, bf16/fp16, no fp8 cache, no sliding window or softcap, head_dim 64 or
128, TMA-aligned tensors; ``PAGEDLM_PREFILL_ATTENTION=0`` turns it off) and the step has enough
prefill tokens to pay for a second launch (``triton_attention.PREFILL_KERNEL_MIN_*``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue
from pagedlm.kernels.triton_attention import _attend_tile, _locate_queries, _softmax_step
from pagedlm.kernels.triton_rotary import _as_rows


@dataclass(frozen=True, slots=True)
class PrefillConfig:
    block_m: int = 128  # query tokens per program (one query head)
    tile_n: int = 64  # keys per TMA tile
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        if self.block_m % self.tile_n:  # the diagonal starts on a tile boundary
            raise ValueError(f"block_m ({self.block_m}) must be a multiple of tile_n ({self.tile_n})")


# The best of a sweep on an H200 (benchmarks/gpu_prefill_attention.py --sweep): 128-token
# blocks with two stages where the contexts are long (4 x 4,096: 1,085 us against 1,114 for
# the short-context config; a 2,048 chunk after 6,144 cached: 550 against 633; 8 x 1,024
# after 1,024 cached: 505 against 545), 64-token blocks with three stages when no context
# passes 1,024 tokens (1 x 512: 13.3 us against 23.4; 2 x 1,024: 55.6 against 68.0).
LONG_CONTEXT_CONFIG = PrefillConfig(block_m=128, tile_n=64, num_warps=4, num_stages=2)
SHORT_CONTEXT_CONFIG = PrefillConfig(block_m=64, tile_n=64, num_warps=4, num_stages=3)
SHORT_CONTEXT_LEN = 1024


def default_config(max_seq_len: int) -> PrefillConfig:
    """The tile config for a step whose longest context (cached + new tokens) is max_seq_len."""
    return SHORT_CONTEXT_CONFIG if max_seq_len <= SHORT_CONTEXT_LEN else LONG_CONTEXT_CONFIG


@triton.jit(do_not_specialize=["num_seqs"])
def _prefill_attention_kernel(
    out_ptr, q_desc, k_desc, v_desc, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    sinks_ptr, scale_log2e, num_seqs, stride_ot, stride_oh, stride_cblk, stride_ctok, stride_chead, stride_bt,
    QUERIES_PER_KV: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
    TILE_N: tl.constexpr, HAS_SINKS: tl.constexpr = False, PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    head = tl.program_id(1)
    kv_head = head // QUERIES_PER_KV
    seq_idx, q_block, q_start, q_len, skip = _locate_queries(query_start_loc_ptr, num_seqs, BLOCK_M, 2)
    if skip:
        return
    context_len = tl.load(seq_lens_ptr + seq_idx).to(tl.int32) - q_len
    first = q_block * BLOCK_M  # the program's first query, counted within this step's tokens
    q_idx = first + tl.arange(0, BLOCK_M)
    q_pos = context_len + q_idx
    offs_d = tl.arange(0, HEAD_DIM)
    # Rows past the sequence's queries hold the next sequence's (or TMA's zero fill): computed, never stored.
    q = q_desc.load([q_start + first, head * HEAD_DIM])
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    if HAS_SINKS:  # the head's sink logit (gpt-oss) seeds every row's softmax: max = sink, sum = 1
        m_i = tl.zeros([BLOCK_M], tl.float32) + tl.load(sinks_ptr + head).to(tl.float32) * 1.4426950408889634
        l_i = l_i + 1.0
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # 1. The cached prefix, through the block table: whole tiles, then the partial one.
    table_row = block_tables_ptr + seq_idx.to(tl.int64) * stride_bt
    head_off = kv_head.to(tl.int64) * stride_chead
    d_valid = offs_d < HEAD_DIM
    whole = context_len // TILE_N
    for tile in range(0, whole):
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, q_pos, tile, context_len, table_row, k_cache_ptr, v_cache_ptr,
                                     head_off, offs_d, d_valid, stride_cblk, stride_ctok, scale_log2e, BLOCK_SIZE,
                                     TILE_N, 0, 0.0, MASKED=False, EVEN_D=True)
    if whole * TILE_N < context_len:  # keys from context_len on are this step's: masked off here
        prefix_pos = tl.zeros_like(q_pos) + (context_len - 1)
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, prefix_pos, whole, context_len, table_row, k_cache_ptr,
                                     v_cache_ptr, head_off, offs_d, d_valid, stride_cblk, stride_ctok, scale_log2e,
                                     BLOCK_SIZE, TILE_N, 0, 0.0, MASKED=True, EVEN_D=True)

    # 2. This step's keys before the program's first query: every row sees them.
    key_col = kv_head * HEAD_DIM
    for start in range(0, first, TILE_N):
        k = k_desc.load([q_start + start, key_col])
        v = v_desc.load([q_start + start, key_col])
        key_pos = context_len + start + tl.arange(0, TILE_N)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, q_pos, key_pos, scale_log2e, 0, 0.0, MASKED=False)
    # 3. The diagonal: keys inside the program's own block, each row up to its own position.
    for start in range(first, tl.minimum(first + BLOCK_M, q_len), TILE_N):
        k = k_desc.load([q_start + start, key_col])
        v = v_desc.load([q_start + start, key_col])
        key_pos = context_len + start + tl.arange(0, TILE_N)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, k, v, q_pos, key_pos, scale_log2e, 0, 0.0, MASKED=True)

    token = (q_start + q_idx).to(tl.int64)
    out = acc / l_i[:, None]
    tl.store(out_ptr + token[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=(q_idx < q_len)[:, None])


def _rows(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor | None:
    """x ([T, heads * head_dim] or [T, heads, head_dim]) as 2-D rows TMA can read (16-byte
    aligned start and row stride), or None."""
    rows = _as_rows(x, head_dim)
    if rows is None or rows.shape[1] != heads * head_dim:
        return None
    if rows.data_ptr() % 16 or (rows.stride(0) * rows.element_size()) % 16:
        return None
    return rows


@functools.lru_cache(maxsize=8)
def _has_tma(device: torch.device) -> bool:
    """An NVIDIA GPU of compute capability 9.0 or later (TMA copies)."""
    return torch.version.hip is None and torch.cuda.get_device_capability(device)[0] >= 9


def supports(query: torch.Tensor, key: torch.Tensor | None, value: torch.Tensor | None, kv_cache: torch.Tensor,
             sliding_window: int | None, softcap: float | None) -> bool:
    """Whether this kernel can run the step's prefill rows (else the paged kernel does)."""
    if key is None or value is None or sliding_window or softcap:
        return False
    if os.environ.get("PAGEDLM_PREFILL_ATTENTION") == "0":
        return False
    if not ((query.is_cuda and _has_tma(query.device)) or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    head_dim = query.shape[-1]
    num_kv_heads = kv_cache.shape[3]
    return (query.dtype in (torch.bfloat16, torch.float16) and kv_cache.dtype == query.dtype
            and key.dtype == value.dtype == query.dtype and head_dim in (64, 128)
            and _rows(query, query.shape[1], head_dim) is not None
            and _rows(key, num_kv_heads, head_dim) is not None and _rows(value, num_kv_heads, head_dim) is not None)


def prefill_attention(out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      kv_cache: torch.Tensor, query_start_loc: torch.Tensor, seq_lens: torch.Tensor,
                      block_tables: torch.Tensor, scale: float, config: PrefillConfig = LONG_CONTEXT_CONFIG,
                      sinks: torch.Tensor | None = None) -> None:
    """Writes ``out`` ([T, Hq, D]) for the rows of every sequence with more than one query
    token; the other rows are left as they are. ``key`` / ``value``: this step's K/V ([T, Hkv *
    D], rotated, equal to what the step wrote into the cache), read in place of the cache for
    this step's positions. ``sinks`` [Hq]: attention-sink logits (gpt-oss). Call ``supports`` first."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    num_tokens, num_q_heads, head_dim = query.shape
    _, _, block_size, num_kv_heads, _ = kv_cache.shape
    q2 = _rows(query, num_q_heads, head_dim)
    k2 = _rows(key, num_kv_heads, head_dim)
    v2 = _rows(value, num_kv_heads, head_dim)
    block_m, tile_n = config.block_m, config.tile_n
    q_desc = TensorDescriptor(q2, list(q2.shape), list(q2.stride()), [block_m, head_dim])
    k_desc = TensorDescriptor(k2, list(k2.shape), list(k2.stride()), [tile_n, head_dim])
    v_desc = TensorDescriptor(v2, list(v2.shape), list(v2.stride()), [tile_n, head_dim])
    num_seqs = seq_lens.shape[0]
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _prefill_attention_kernel[(num_tokens // block_m + num_seqs, num_q_heads)](
        out, q_desc, k_desc, v_desc, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
        seq_lens if sinks is None else sinks, scale * 1.4426950408889634, num_seqs, out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        QUERIES_PER_KV=num_q_heads // num_kv_heads, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_M=block_m,
        TILE_N=tile_n, HAS_SINKS=sinks is not None, num_warps=config.num_warps, num_stages=config.num_stages,
        **launch_kwargs(),
    )


__all__ = ["PrefillConfig", "default_config", "prefill_attention", "supports"]
