"""RoPE and the KV-cache write in one launch: the query heads are rotated into a new tensor
and the key heads are rotated straight into their cache slot, with the value beside them.

Same results as ``triton_rotary.rotary_embedding`` followed by ``triton_kv_cache.write_kv_cache``
(the rotated key is rounded to the query's dtype before it is cast or fp8-quantized into the
cache, as the two launches do), one kernel launch and one pass over the key fewer per layer.
Grid: (tokens, query head blocks + 1); the last program of a token does all of its KV heads
(slot -1 = padding: nothing written).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedlm.attention.kv_cache_dtype import fp8_max, is_fp8
from pagedlm.kernels import reference
from pagedlm.kernels.triton_kv_cache import _quantize, _unit_scale
from pagedlm.kernels.triton_rotary import _as_rows, _rotate_heads, token_cos_sin
from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue


@triton.jit
def _cache_half(x, cache_ptr, cache_off, mask, round_ty, scale_ptr, FP8_MAX: tl.constexpr):
    x = x.to(round_ty)  # the dtype the unfused path hands to the cache write
    if FP8_MAX > 0:
        x = _quantize(x, scale_ptr, FP8_MAX)
    tl.store(cache_ptr + cache_off, x.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kv_kernel(
    positions_ptr, q_ptr, k_ptr, v_ptr, q_out_ptr, k_out_ptr, cos_sin_ptr, k_cache_ptr, v_cache_ptr, slot_mapping_ptr,
    k_scale_ptr, v_scale_ptr,
    stride_q, stride_k, stride_v, stride_q_out, stride_cs, stride_cblk, stride_ctok, stride_chead,
    num_q_heads, num_kv_heads,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HEADS_BLOCK: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, FP8_MAX: tl.constexpr, K_OUT: tl.constexpr = False, PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    token = tl.program_id(0).to(tl.int64)
    head_block = tl.program_id(1)
    cos, sin = token_cos_sin(positions_ptr, cos_sin_ptr, token, stride_cs, HALF, HALF_PAD)
    offs_d = tl.arange(0, HALF_PAD)
    if head_block < tl.cdiv(num_q_heads, HEADS_BLOCK):
        _rotate_heads(q_ptr + token * stride_q, q_out_ptr + token * stride_q_out, head_block * HEADS_BLOCK,
                      num_q_heads, cos, sin, HALF, HALF_PAD, HEADS_BLOCK)
    else:
        slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
        heads = tl.arange(0, KV_HEADS_PAD)
        mask = (heads < num_kv_heads)[:, None] & (offs_d < HALF)[None, :]
        col = heads[:, None] * (2 * HALF) + offs_d[None, :]
        k_row = k_ptr + token * stride_k
        if K_OUT:  # the rotated keys of every token, padding included, for the prefill attention
            rot1, rot2 = _rotate_key(k_row, col, mask, cos, sin, HALF)
            k_out_row = k_out_ptr + token * (num_kv_heads * 2 * HALF)
            tl.store(k_out_row + col, rot1.to(k_out_ptr.dtype.element_ty), mask=mask)
            tl.store(k_out_row + col + HALF, rot2.to(k_out_ptr.dtype.element_ty), mask=mask)
            if slot >= 0:
                _write_slot(rot1, rot2, v_ptr + token * stride_v, slot, heads, offs_d, col, mask, k_cache_ptr,
                            v_cache_ptr, k_scale_ptr, v_scale_ptr, q_out_ptr.dtype.element_ty, stride_cblk, stride_ctok,
                            stride_chead, HALF, BLOCK_SIZE, FP8_MAX)
        elif slot >= 0:
            rot1, rot2 = _rotate_key(k_row, col, mask, cos, sin, HALF)
            _write_slot(rot1, rot2, v_ptr + token * stride_v, slot, heads, offs_d, col, mask, k_cache_ptr,
                        v_cache_ptr, k_scale_ptr, v_scale_ptr, q_out_ptr.dtype.element_ty, stride_cblk, stride_ctok,
                        stride_chead, HALF, BLOCK_SIZE, FP8_MAX)


@triton.jit
def _rotate_key(k_row, col, mask, cos, sin, HALF: tl.constexpr):
    """A token's KV heads of the key, rotated, in float32 (two halves)."""
    k1 = tl.load(k_row + col, mask=mask, other=0.0).to(tl.float32)
    k2 = tl.load(k_row + col + HALF, mask=mask, other=0.0).to(tl.float32)
    return k1 * cos[None, :] - k2 * sin[None, :], k2 * cos[None, :] + k1 * sin[None, :]


@triton.jit
def _write_slot(rot1, rot2, v_row, slot, heads, offs_d, col, mask, k_cache_ptr, v_cache_ptr, k_scale_ptr, v_scale_ptr,
                round_ty: tl.constexpr, stride_cblk, stride_ctok, stride_chead, HALF: tl.constexpr,
                BLOCK_SIZE: tl.constexpr, FP8_MAX: tl.constexpr):
    """The rotated key and the value of one token into its cache slot."""
    cache_off = ((slot // BLOCK_SIZE) * stride_cblk + (slot % BLOCK_SIZE) * stride_ctok
                 + heads[:, None] * stride_chead + offs_d[None, :])
    _cache_half(rot1, k_cache_ptr, cache_off, mask, round_ty, k_scale_ptr, FP8_MAX)
    _cache_half(rot2, k_cache_ptr, cache_off + HALF, mask, round_ty, k_scale_ptr, FP8_MAX)
    _cache_half(tl.load(v_row + col, mask=mask, other=0.0), v_cache_ptr, cache_off, mask,
                v_row.dtype.element_ty, v_scale_ptr, FP8_MAX)
    _cache_half(tl.load(v_row + col + HALF, mask=mask, other=0.0), v_cache_ptr, cache_off + HALF, mask,
                v_row.dtype.element_ty, v_scale_ptr, FP8_MAX)


def rotary_write_kv_cache(
    positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    cos_sin_cache: torch.Tensor, head_dim: int, kv_cache: torch.Tensor, slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None, return_key: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Same contract as ``reference.rotary_write_kv_cache``: returns the rotated query (and,
    with ``return_key``, the rotated key as a new [T, Hkv * D] tensor)."""
    num_tokens = query.shape[0]
    _, _, block_size, num_kv_heads, cache_head_dim = kv_cache.shape
    rows = [_as_rows(x, head_dim) for x in (query, key, value)]
    if (cos_sin_cache.shape[-1] != head_dim or cos_sin_cache.dtype != torch.float32 or head_dim % 2
            or cache_head_dim != head_dim or kv_cache.stride(-1) != 1 or any(r is None for r in rows)):
        return reference.rotary_write_kv_cache(positions, query, key, value, cos_sin_cache, head_dim, kv_cache,
                                               slot_mapping, k_scale, v_scale, return_key)
    q2, k2, v2 = rows
    q_out = torch.empty(q2.shape, dtype=query.dtype, device=query.device)
    k_out = torch.empty(k2.shape, dtype=query.dtype, device=query.device) if return_key else q_out
    if num_tokens == 0:
        return (q_out.view(query.shape), k_out) if return_key else q_out.view(query.shape)
    cos_sin = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    num_q_heads = q2.shape[1] // head_dim
    half = head_dim // 2
    half_pad = triton.next_power_of_2(half)
    heads_block = min(triton.next_power_of_2(num_q_heads), max(1, 2048 // half_pad))
    limit = fp8_max(kv_cache.dtype) if is_fp8(kv_cache.dtype) else 0.0
    unit = _unit_scale(kv_cache.device)
    k_cache, v_cache = kv_cache[0], kv_cache[1]
    _rope_kv_kernel[(num_tokens, triton.cdiv(num_q_heads, heads_block) + 1)](
        positions, q2, k2, v2, q_out, k_out, cos_sin, k_cache, v_cache, slot_mapping,
        k_scale if k_scale is not None else unit, v_scale if v_scale is not None else unit,
        q2.stride(0), k2.stride(0), v2.stride(0), q_out.stride(0), cos_sin.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        num_q_heads, num_kv_heads,
        HALF=half, HALF_PAD=half_pad, HEADS_BLOCK=heads_block, KV_HEADS_PAD=triton.next_power_of_2(num_kv_heads),
        BLOCK_SIZE=block_size, FP8_MAX=limit, K_OUT=return_key, num_warps=4, **launch_kwargs(),
    )
    return (q_out.view(query.shape), k_out) if return_key else q_out.view(query.shape)
