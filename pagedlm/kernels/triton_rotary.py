"""Neox-style (rotate-half) rotary embedding in Triton: one program per (token, block of
query or key heads); for Llama-8B shapes that is two programs per token.

Returns new tensors shaped like the inputs (the inputs are untouched), as the reference does.
The inputs may be column slices of a fused QKV output (any row stride); within a row the
heads must be packed with unit stride along head_dim.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedlm.kernels import reference
from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue


@triton.jit
def _rotate_heads(
    x_row_ptr, out_row_ptr, first_head, num_heads, cos, sin,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HEADS_BLOCK: tl.constexpr,
):
    # cos/sin: [HALF_PAD] float32 of this token; a row holds num_heads * 2 * HALF values.
    heads = first_head + tl.arange(0, HEADS_BLOCK)
    offs_d = tl.arange(0, HALF_PAD)
    mask = (heads < num_heads)[:, None] & (offs_d < HALF)[None, :]
    col = heads[:, None] * (2 * HALF) + offs_d[None, :]
    x1 = tl.load(x_row_ptr + col, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row_ptr + col + HALF, mask=mask, other=0.0).to(tl.float32)
    o1 = x1 * cos[None, :] - x2 * sin[None, :]
    o2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(out_row_ptr + col, o1.to(out_row_ptr.dtype.element_ty), mask=mask)
    tl.store(out_row_ptr + col + HALF, o2.to(out_row_ptr.dtype.element_ty), mask=mask)


@triton.jit
def token_cos_sin(positions_ptr, cos_sin_ptr, token, stride_cs, HALF: tl.constexpr, HALF_PAD: tl.constexpr):
    """cos and sin [HALF_PAD] float32 at this token's position (the fused RoPE + KV write uses it too)."""
    pos = tl.load(positions_ptr + token).to(tl.int64)
    offs_d = tl.arange(0, HALF_PAD)
    cs_row = cos_sin_ptr + pos * stride_cs
    cos = tl.load(cs_row + offs_d, mask=offs_d < HALF, other=0.0)
    sin = tl.load(cs_row + HALF + offs_d, mask=offs_d < HALF, other=0.0)
    return cos, sin


@triton.jit
def _rotary_kernel(
    positions_ptr, q_ptr, k_ptr, q_out_ptr, k_out_ptr, cos_sin_ptr,
    stride_q, stride_k, stride_q_out, stride_k_out, stride_cs,
    num_q_heads, num_kv_heads,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr, HEADS_BLOCK: tl.constexpr, PDL: tl.constexpr = False,
):
    # Grid: (tokens, query head blocks + key head blocks).
    pdl_prologue(PDL)
    token = tl.program_id(0).to(tl.int64)
    head_block = tl.program_id(1)
    cos, sin = token_cos_sin(positions_ptr, cos_sin_ptr, token, stride_cs, HALF, HALF_PAD)
    num_q_blocks = tl.cdiv(num_q_heads, HEADS_BLOCK)
    if head_block < num_q_blocks:
        _rotate_heads(q_ptr + token * stride_q, q_out_ptr + token * stride_q_out, head_block * HEADS_BLOCK,
                      num_q_heads, cos, sin, HALF, HALF_PAD, HEADS_BLOCK)
    else:
        _rotate_heads(k_ptr + token * stride_k, k_out_ptr + token * stride_k_out,
                      (head_block - num_q_blocks) * HEADS_BLOCK, num_kv_heads, cos, sin, HALF, HALF_PAD, HEADS_BLOCK)


def _as_rows(x: torch.Tensor, head_dim: int) -> torch.Tensor | None:
    """x as [T, H * D] with heads packed along a unit-stride row, or None if it can't be."""
    if x.dim() == 2 and x.stride(-1) == 1:
        return x
    if x.dim() == 3 and x.stride(-1) == 1 and x.stride(1) == head_dim and x.shape[-1] == head_dim:
        return x.as_strided((x.shape[0], x.shape[1] * head_dim), (x.stride(0), 1))
    return None


def rotary_embedding(
    positions: torch.Tensor,  # [T] int64 (int32 works too)
    query: torch.Tensor,  # [T, Hq * D] or [T, Hq, D]
    key: torch.Tensor,  # [T, Hkv * D] or [T, Hkv, D]
    cos_sin_cache: torch.Tensor,  # [max_pos, D] float32: cos in the first half, sin in the second
    head_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    num_tokens = query.shape[0]
    if cos_sin_cache.shape[-1] != head_dim or cos_sin_cache.dtype != torch.float32 or head_dim % 2:
        return reference.rotary_embedding(positions, query, key, cos_sin_cache, head_dim)
    q2 = _as_rows(query, head_dim)
    k2 = _as_rows(key, head_dim)
    q2 = q2 if q2 is not None else query.reshape(num_tokens, -1).contiguous()
    k2 = k2 if k2 is not None else key.reshape(num_tokens, -1).contiguous()
    q_out = torch.empty(q2.shape, dtype=query.dtype, device=query.device)
    k_out = torch.empty(k2.shape, dtype=query.dtype, device=key.device)
    if num_tokens == 0:
        return q_out.view(query.shape), k_out.view(key.shape)
    cos_sin = cos_sin_cache if cos_sin_cache.stride(-1) == 1 else cos_sin_cache.contiguous()
    num_q_heads = q2.shape[1] // head_dim
    num_kv_heads = k2.shape[1] // head_dim
    half = head_dim // 2
    half_pad = triton.next_power_of_2(half)
    heads_block = min(triton.next_power_of_2(max(num_q_heads, num_kv_heads)), max(1, 2048 // half_pad))
    grid = (num_tokens, triton.cdiv(num_q_heads, heads_block) + triton.cdiv(num_kv_heads, heads_block))
    _rotary_kernel[grid](
        positions, q2, k2, q_out, k_out, cos_sin,
        q2.stride(0), k2.stride(0), q_out.stride(0), k_out.stride(0), cos_sin.stride(0),
        num_q_heads, num_kv_heads,
        HALF=half, HALF_PAD=half_pad, HEADS_BLOCK=heads_block, num_warps=4, **launch_kwargs(),
    )
    return q_out.view(query.shape), k_out.view(key.shape)
