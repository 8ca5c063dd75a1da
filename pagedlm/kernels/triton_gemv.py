"""Split-K GEMV for decode (M = 1-16 rows): y[M, N] = x[M, K] @ W[N, K]^T, W read once.

At decode batch sizes a linear layer is a pass over its weight; cuBLAS reaches about 75% of
copy bandwidth there. Here each program owns BLOCK_N output columns and one of SPLIT_K
slices of K: enough programs to keep every SM streaming even for N = 4096. With SPLIT_K > 1
the slices write float32 partial sums [SPLIT_K, M, N] that one sum reduces (deterministic,
no atomics). The rows are padded to 16 inside the kernel so tl.dot can be used.

The reference is F.linear (pagedlm.kernels.gemv.gemv_reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue

MAX_M = 16


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 64
    block_k: int = 256
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K, k_per_split,
    stride_xm, stride_wn, stride_os, stride_om,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    k_lo = pid_k * k_per_split
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_lo + k_per_split, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_mask = (rk < K) & (rk < k_lo + k_per_split)
        w = tl.load(w_ptr + rn[:, None].to(tl.int64) * stride_wn + rk[None, :],
                    mask=(rn[:, None] < N) & k_mask[None, :], other=0.0)  # [BLOCK_N, BLOCK_K]
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :],
                    mask=(rm[:, None] < M) & k_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        acc += tl.dot(x, tl.trans(w), out_dtype=tl.float32)
    out = out_ptr + pid_k.to(tl.int64) * stride_os + rm[:, None] * stride_om + rn[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: GemvConfig = GemvConfig()) -> torch.Tensor:
    """x [M, K] (M <= 16), weight [N, K] -> [M, N] in x's dtype; same contract as F.linear."""
    m, k = x.shape
    n = weight.shape[0]
    if m > MAX_M or weight.shape[1] != k:
        raise ValueError(f"gemv takes x [M <= {MAX_M}, K] and weight [N, K]; got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("gemv needs unit stride along K")
    split = max(1, config.split_k)
    # Each split's K range is a multiple of BLOCK_K, so only the last one is ragged.
    k_per_split = triton.cdiv(triton.cdiv(k, split), config.block_k) * config.block_k
    split = triton.cdiv(k, k_per_split)
    if split == 1:
        out = torch.empty(1, m, n, dtype=x.dtype, device=x.device)
    else:
        out = torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, config.block_n), split)
    _gemv_kernel[grid](
        x, weight, out, m, n, k, k_per_split,
        x.stride(0), weight.stride(0), out.stride(0), out.stride(1),
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, BLOCK_M=MAX_M,
        num_warps=config.num_warps, num_stages=config.num_stages, **launch_kwargs(),
    )
    y = out[0] if split == 1 else out.sum(0).to(x.dtype)
    if bias is not None:
        y = y + bias
    return y


def candidate_configs() -> list[GemvConfig]:
    """The sweep the benchmark and the first-use tuner time."""
    configs = []
    for block_n in (16, 32, 64, 128):
        for block_k in (128, 256, 512):
            for split_k in (1, 2, 4, 8):
                for num_warps in (4, 8):
                    configs.append(GemvConfig(block_n, block_k, split_k, num_warps))
    return configs


def quick_configs() -> list[GemvConfig]:
    """A few configs that cover the 8B decode shapes (few compiles at first use)."""
    return [GemvConfig(64, 256, 1, 4), GemvConfig(32, 256, 2, 4), GemvConfig(32, 512, 4, 4),
            GemvConfig(16, 512, 4, 4), GemvConfig(64, 128, 4, 4), GemvConfig(16, 256, 8, 4),
            GemvConfig(128, 128, 2, 8), GemvConfig(32, 256, 1, 4)]
