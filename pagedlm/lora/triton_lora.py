"""Triton shrink / expand (SGMV style) with the signatures of ``pagedlm.lora.ops``' references.

One launch covers the whole batch: the grid is (token blocks, output blocks, adapter slots).
A program multiplies the tokens of its block that use its slot (a masked tile, tensor-core
``tl.dot``) and skips when none does, so the tokens of one adapter need not be contiguous
and no sort is needed. Nothing syncs with the host and the grid depends only on the number
of tokens, so both kernels are captured in the decode CUDA graphs; the token -> slot
mapping is read from a device buffer at replay (a step input, not a graph constant).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, slot_ptr, out_ptr, T, N, K, K_PER_SPLIT, stride_xt, stride_al, stride_an,
                   stride_ot, SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, PDL: tl.constexpr = False):
    pdl_prologue(PDL)
    pid_m, pid_nk, slot = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pid_n, pid_k = pid_nk // SPLIT_K, pid_nk % SPLIT_K
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slots = tl.load(slot_ptr + offs_m, mask=offs_m < T, other=-1)
    rows = slots == slot
    if tl.sum(rows.to(tl.int32), axis=0) > 0:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        k_start = pid_k * K_PER_SPLIT
        for k0 in range(k_start, k_start + K_PER_SPLIT, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xt + offs_k[None, :],
                        mask=rows[:, None] & (offs_k[None, :] < K), other=0.0)
            a = tl.load(a_ptr + slot * stride_al + offs_n[None, :] * stride_an + offs_k[:, None],
                        mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0.0)
            acc += tl.dot(x, a)
        out_ptrs = out_ptr + offs_m[:, None] * stride_ot + offs_n[None, :]
        out_mask = rows[:, None] & (offs_n[None, :] < N)
        if SPLIT_K == 1:
            tl.store(out_ptrs, acc, mask=out_mask)
        else:  # partial sums over this program's share of K, into the zeroed float32 output
            tl.atomic_add(out_ptrs, acc, mask=out_mask)


@triton.jit
def _slice_dot(s_ptr, b_ptr, slot, offs_m, offs_n, offs_r, rows, R, stride_st, stride_bl, stride_bm, i, lo, hi):
    """The contribution of slice i (output columns [lo, hi)) to a [BLOCK_M, BLOCK_N] tile;
    columns outside the slice read zeros from B, so a tile may straddle two slices."""
    cols = (offs_n >= lo) & (offs_n < hi)
    s = tl.load(s_ptr + offs_m[:, None] * stride_st + i * R + offs_r[None, :],
                mask=rows[:, None] & (offs_r[None, :] < R), other=0.0)
    b = tl.load(b_ptr + slot * stride_bl + offs_n[None, :] * stride_bm + offs_r[:, None],
                mask=cols[None, :] & (offs_r[:, None] < R), other=0.0)
    return tl.dot(s.to(b.dtype), b, out_dtype=tl.float32)


@triton.jit
def _expand_kernel(s_ptr, b_ptr, slot_ptr, y_ptr, T, M, R, stride_st, stride_bl, stride_bm, stride_yt,
                   ST0, ST1, ST2, ST3, NUM_SLICES: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, PDL: tl.constexpr = False):
    pdl_prologue(PDL)
    pid_m, pid_n, slot = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    slots = tl.load(slot_ptr + offs_m, mask=offs_m < T, other=-1)
    rows = slots == slot
    if tl.sum(rows.to(tl.int32), axis=0) > 0:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_r = tl.arange(0, BLOCK_R)
        acc = _slice_dot(s_ptr, b_ptr, slot, offs_m, offs_n, offs_r, rows, R, stride_st, stride_bl, stride_bm,
                          0, ST0, ST1)
        if NUM_SLICES > 1:
            acc += _slice_dot(s_ptr, b_ptr, slot, offs_m, offs_n, offs_r, rows, R, stride_st, stride_bl,
                              stride_bm, 1, ST1, ST2)
        if NUM_SLICES > 2:
            acc += _slice_dot(s_ptr, b_ptr, slot, offs_m, offs_n, offs_r, rows, R, stride_st, stride_bl,
                              stride_bm, 2, ST2, ST3)
        mask = rows[:, None] & (offs_n[None, :] < M)
        y_ptrs = y_ptr + offs_m[:, None] * stride_yt + offs_n[None, :]
        y = tl.load(y_ptrs, mask=mask, other=0.0)
        tl.store(y_ptrs, (y.to(tl.float32) + acc).to(y.dtype), mask=mask)


BLOCK_K = 64
SPLIT_K_WIDTH = 512


def _block_m(num_tokens: int) -> int:
    return 16 if num_tokens <= 32 else 64


def lora_shrink(x: torch.Tensor, lora_a: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
    num_tokens, k = x.shape
    num_slots, n, _ = lora_a.shape
    out = torch.zeros(num_tokens, n, dtype=torch.float32, device=x.device)
    if num_tokens == 0:
        return out
    x = x.contiguous()
    block_m, block_n = _block_m(num_tokens), min(64, max(16, triton.next_power_of_2(n)))
    # Split K (the layer's input width, up to 14336) so a decode batch, only a few token
    # blocks tall, still spreads over the SMs: about SPLIT_K_WIDTH of K per program.
    k_per_split = triton.cdiv(min(k, SPLIT_K_WIDTH), BLOCK_K) * BLOCK_K
    split_k = triton.cdiv(k, k_per_split)
    grid = (triton.cdiv(num_tokens, block_m), triton.cdiv(n, block_n) * split_k, num_slots)
    _shrink_kernel[grid](x, lora_a, token_slots, out, num_tokens, n, k, k_per_split, x.stride(0), lora_a.stride(0),
                         lora_a.stride(1), out.stride(0), SPLIT_K=split_k, BLOCK_M=block_m, BLOCK_N=block_n,
                         BLOCK_K=BLOCK_K, **launch_kwargs())
    return out


def lora_expand(y: torch.Tensor, shrunk: torch.Tensor, lora_b: torch.Tensor, token_slots: torch.Tensor,
                slice_starts: tuple[int, ...], rank: int) -> None:
    num_tokens, m = y.shape
    if num_tokens == 0:
        return
    num_slices = len(slice_starts) - 1
    if not 1 <= num_slices <= 3:
        raise ValueError(f"lora_expand handles 1 to 3 slices, got {num_slices}")
    starts = list(slice_starts) + [m] * (4 - len(slice_starts))
    shrunk = shrunk.contiguous()
    block_m, block_n = _block_m(num_tokens), 64
    grid = (triton.cdiv(num_tokens, block_m), triton.cdiv(m, block_n), lora_b.shape[0])
    _expand_kernel[grid](shrunk, lora_b, token_slots, y, num_tokens, m, rank, shrunk.stride(0), lora_b.stride(0),
                         lora_b.stride(1), y.stride(0), *starts, NUM_SLICES=num_slices, BLOCK_M=block_m,
                         BLOCK_N=block_n, BLOCK_R=max(16, triton.next_power_of_2(rank)), **launch_kwargs())
