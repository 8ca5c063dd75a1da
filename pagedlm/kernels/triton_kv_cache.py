"""Writes this step's K/V into the paged cache through the slot mapping, in Triton: one
program per token copies all of its KV heads for K and V (slot -1 = padding, skipped).

kv_cache layout: [2, num_blocks, block_size, num_kv_heads, head_dim], unit stride along
head_dim; any other strides are honoured. key/value may be views of a fused QKV output
(any token stride, heads packed with unit stride along head_dim)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _write_kv_cache_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cblk, stride_ctok, stride_chead,
    num_kv_heads,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, HEADS_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    offset = slot % BLOCK_SIZE
    heads = tl.arange(0, HEADS_PAD)
    dims = tl.arange(0, HEAD_PAD)
    mask = (heads < num_kv_heads)[:, None] & (dims < HEAD_DIM)[None, :]
    cache_off = block * stride_cblk + offset * stride_ctok + heads[:, None] * stride_chead + dims[None, :]
    k = tl.load(key_ptr + token * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
    v = tl.load(value_ptr + token * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
    tl.store(k_cache_ptr + cache_off, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + cache_off, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def _heads_view(x: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    x = x.view(x.shape[0], num_kv_heads, head_dim) if x.dim() == 2 else x
    return x if x.stride(-1) == 1 else x.contiguous()


def write_kv_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64 or int32, block_id * BS + offset; -1 = not written
) -> None:
    _, _, block_size, num_kv_heads, head_dim = kv_cache.shape
    num_tokens = key.shape[0]
    if num_tokens == 0:
        return
    if kv_cache.stride(-1) != 1:
        raise ValueError("kv_cache must have unit stride along head_dim")
    key = _heads_view(key, num_kv_heads, head_dim)
    value = _heads_view(value, num_kv_heads, head_dim)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    head_pad = triton.next_power_of_2(head_dim)
    heads_pad = triton.next_power_of_2(num_kv_heads)
    num_warps = 4 if heads_pad * head_pad <= 4096 else 8
    _write_kv_cache_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_kv_heads,
        HEAD_DIM=head_dim, HEAD_PAD=head_pad, HEADS_PAD=heads_pad, BLOCK_SIZE=block_size,
        num_warps=num_warps,
    )
