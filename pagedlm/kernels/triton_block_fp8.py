"""Block-wise fp8 GEMM on 16-bit activations (W8A16): y[M, N] = x[M, K] @ W^T (+ bias), W = the
fp8 codes [N, K] times one float32 scale per [bn, bk] block (Qwen's and DeepSeek's FP8
checkpoints), for batches past the decode GEMV's 8 rows.

Each program owns a BLOCK_M x BLOCK_N output tile and walks K in steps of exactly bk, so a
step's codes share one scale per output column: the codes widen to the activations' 16-bit
type (exact), go through the tensor cores against x, and the step's float32 product is scaled
per column before it joins the accumulator (as vLLM's block-fp8 kernel applies its scales).
The codes are read once, one byte each; the dequantize-then-GEMM it replaces writes and reads a
16-bit copy of the weight on every call. Columns past N and rows past M re-read the last valid
one (clamped indices); the last K step is masked when K is not whole blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue


@dataclass(frozen=True)
class BlockFp8GemmConfig:
    block_m: int = 64
    block_n: int = 128
    num_warps: int = 4
    num_stages: int = 3


# The tile shapes the load-time tuner times per M bucket (``block_fp8_linear``): narrow tiles
# for tens of rows, square ones for hundreds.
QUICK_CONFIGS = (BlockFp8GemmConfig(16, 64, 4, 4), BlockFp8GemmConfig(32, 64, 4, 4), BlockFp8GemmConfig(32, 128, 4, 3),
                 BlockFp8GemmConfig(64, 128, 4, 3), BlockFp8GemmConfig(128, 128, 8, 3))


@triton.jit
def _block_fp8_gemm_kernel(x_ptr, w_ptr, s_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_sn,
                           stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_SN: tl.constexpr, GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr,
                           PDL: tl.constexpr = False):
    # programs in groups of GROUP_M row tiles per column tile, so neighbours share weight tiles in L2
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % rows_in_group
    pid_n = (pid % (GROUP_M * tiles_n)) // rows_in_group
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm_load = tl.minimum(rm, M - 1).to(tl.int64)
    rn_load = tl.minimum(rn, N - 1).to(tl.int64)
    rk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + rm_load[:, None] * stride_xm
    w_rows = w_ptr + rn_load[:, None] * stride_wn
    s_cols = s_ptr + (rn_load // BLOCK_SN) * stride_sn  # each column's row of block scales
    pdl_prologue(PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k = kb * BLOCK_K + rk
        kmask = k < K
        x = tl.load(x_rows + k[None, :], mask=kmask[None, :], other=0.0)
        w = tl.load(w_rows + k[None, :], mask=kmask[None, :], other=0.0)
        part = tl.dot(x, tl.trans(w.to(x.dtype)))
        acc += part * tl.load(s_cols + kb)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn_load)[None, :].to(tl.float32)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def block_fp8_gemm(x: torch.Tensor, w: torch.Tensor, block_scale: torch.Tensor, block: tuple[int, int],
                   bias: torch.Tensor | None = None, config: BlockFp8GemmConfig = BlockFp8GemmConfig()) -> torch.Tensor:
    """x [M, K] bf16 / fp16, w [N, K] fp8 codes, block_scale [ceil(N / bn), ceil(K / bk)] float32
    -> [M, N] in x's dtype (the product with the dequantized weight, float32 sums)."""
    m, k = x.shape
    n = w.shape[0]
    bn, bk = block
    if x.element_size() != 2 or w.shape[1] != k or w.element_size() != 1:
        raise ValueError(f"block_fp8_gemm takes 16-bit x [M, K] and fp8 w [N, K]; got {x.dtype} {tuple(x.shape)}, "
                         f"{w.dtype} {tuple(w.shape)}")
    if tuple(block_scale.shape) != (-(-n // bn), -(-k // bk)) or bk < 16 or bk & (bk - 1):
        raise ValueError(f"block_fp8_gemm: scales {tuple(block_scale.shape)} for a {n} x {k} weight in {bn} x {bk} "
                         "blocks (bk a power of two of at least 16)")
    if x.stride(1) != 1 or w.stride(1) != 1 or block_scale.stride(1) != 1:
        raise ValueError("block_fp8_gemm needs unit stride along K")
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n),)
    _block_fp8_gemm_kernel[grid](
        x, w, block_scale, bias if bias is not None else out, out, m, n, k, x.stride(0), w.stride(0),
        block_scale.stride(0), out.stride(0), BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=bk,
        BLOCK_SN=bn, GROUP_M=8, HAS_BIAS=bias is not None, num_warps=config.num_warps,
        num_stages=config.num_stages, **launch_kwargs())
    return out
