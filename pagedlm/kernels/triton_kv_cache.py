"""Writes this step's K/V into the paged cache through the slot mapping, in Triton: one
program per token copies all of its KV heads for K and V (slot -1 = padding, skipped).

kv_cache layout: [2, num_blocks, block_size, num_kv_heads, head_dim], unit stride along
head_dim; any other strides are honoured. key/value may be views of a fused QKV output
(any token stride, heads packed with unit stride along head_dim).

An fp8 cache (float8_e4m3fn / float8_e5m2) gets fp8(x / scale) with a per-tensor float32 scale
read from device memory, clamped to the format's range; any other cache gets x as it is."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from pagedlm.attention.kv_cache_dtype import fp8_max, is_fp8
from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue


@triton.jit
def _quantize(x, scale_ptr, FP8_MAX: tl.constexpr):
    """fp8-ready float32: x / scale clamped to the format's range (round to nearest even on
    the store, like the reference's .to(fp8)). IEEE division, so the bytes match it."""
    xf = tl.math.div_rn(x.to(tl.float32), tl.load(scale_ptr))
    return tl.minimum(tl.maximum(xf, -FP8_MAX), FP8_MAX)


@triton.jit
def _write_kv_cache_kernel(
    key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr, k_scale_ptr, v_scale_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cblk, stride_ctok, stride_chead,
    num_kv_heads,
    HEAD_DIM: tl.constexpr, HEAD_PAD: tl.constexpr, HEADS_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    FP8_MAX: tl.constexpr = 0.0, PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
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
    if FP8_MAX > 0:  # an fp8 cache: store fp8(x / scale)
        k = _quantize(k, k_scale_ptr, FP8_MAX)
        v = _quantize(v, v_scale_ptr, FP8_MAX)
    tl.store(k_cache_ptr + cache_off, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + cache_off, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


@functools.lru_cache(maxsize=8)
def _unit_scale(device: torch.device) -> torch.Tensor:
    """A scale of 1.0 on ``device``, made once (a fresh tensor per call would break CUDA graphs)."""
    return torch.ones(1, dtype=torch.float32, device=device)


def _heads_view(x: torch.Tensor, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    x = x.view(x.shape[0], num_kv_heads, head_dim) if x.dim() == 2 else x
    return x if x.stride(-1) == 1 else x.contiguous()


def write_kv_cache(
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    kv_cache: torch.Tensor,  # [2, NB, BS, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64 or int32, block_id * BS + offset; -1 = not written
    k_scale: torch.Tensor | None = None,  # [1] float32: an fp8 cache stores fp8(key / k_scale); None = 1.0
    v_scale: torch.Tensor | None = None,  # [1] float32, likewise for value
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
    limit = 0.0  # 0: not an fp8 cache
    if is_fp8(kv_cache.dtype):
        limit = fp8_max(kv_cache.dtype)
        k_scale = k_scale if k_scale is not None else _unit_scale(kv_cache.device)
        v_scale = v_scale if v_scale is not None else _unit_scale(kv_cache.device)
    else:
        k_scale = v_scale = slot_mapping  # unused
    _write_kv_cache_kernel[(num_tokens,)](
        key, value, k_cache, v_cache, slot_mapping, k_scale, v_scale,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_kv_heads,
        HEAD_DIM=head_dim, HEAD_PAD=head_pad, HEADS_PAD=heads_pad, BLOCK_SIZE=block_size, FP8_MAX=limit,
        num_warps=num_warps, **launch_kwargs(),
    )
