"""bitsandbytes 4-bit (NF4 / FP4) GEMM on 16-bit activations: y[M, N] = x[M, K] @ W^T (+ bias),
W[n, k] = table[code[n, k]] * absmax[n, k // blocksize], the codes packed two to a byte
[N, K / 2] (high nibble first: the even input), as ``bitsandbytes.py`` keeps a layer.

Each program owns a BLOCK_M x BLOCK_N output tile and walks K one block of ``blocksize``
inputs at a time, so a step's weights share one absmax per output column. The step's bytes
are read once; their high and low nibbles look up the 16-value table (as the activations'
16-bit type) into two [BLOCK_N, blocksize / 2] tiles, which the tensor cores multiply with
the even and the odd inputs of x (two dots: no interleaving of the nibbles); the step's float32
sum is scaled per column by its absmax before it joins the accumulator. Against the layer's
dequantize-then-GEMM this reads half a byte per weight instead of writing and reading a
16-bit copy (and the float32 lookups that build it) on every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue


@dataclass(frozen=True)
class Nf4GemmConfig:
    block_m: int = 16
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3


# The tile shapes the load-time tuner times per M bucket (``bnb_linear``).
QUICK_CONFIGS = (Nf4GemmConfig(16, 32, 4, 3), Nf4GemmConfig(16, 64, 4, 3), Nf4GemmConfig(16, 128, 4, 4),
                 Nf4GemmConfig(32, 128, 4, 3), Nf4GemmConfig(64, 128, 4, 3), Nf4GemmConfig(128, 128, 8, 3))


@triton.jit
def _nf4_gemm_kernel(x_ptr, w_ptr, absmax_ptr, table_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_wn,
                     stride_an, stride_t, stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCKSIZE: tl.constexpr, GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr = False):
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
    HALF: tl.constexpr = BLOCKSIZE // 2
    rp = tl.arange(0, HALF)  # byte (input pair) index within a block
    x_rows = x_ptr + rm_load[:, None] * stride_xm
    w_rows = w_ptr + rn_load[:, None] * stride_wn
    a_cols = absmax_ptr + rn_load * stride_an
    pdl_prologue(PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, K // BLOCKSIZE):
        byte = tl.load(w_rows + kb * HALF + rp[None, :]).to(tl.int32)  # [BLOCK_N, HALF]
        x_even = tl.load(x_rows + kb * BLOCKSIZE + 2 * rp[None, :])  # [BLOCK_M, HALF]
        x_odd = tl.load(x_rows + kb * BLOCKSIZE + 2 * rp[None, :] + 1)
        hi = tl.load(table_ptr + (byte >> 4) * stride_t).to(x_even.dtype)
        lo = tl.load(table_ptr + (byte & 15) * stride_t).to(x_even.dtype)
        part = tl.dot(x_even, tl.trans(hi)) + tl.dot(x_odd, tl.trans(lo))
        acc += part * tl.load(a_cols + kb)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn_load)[None, :].to(tl.float32)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def nf4_gemm(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor,
             bias: torch.Tensor | None = None, config: Nf4GemmConfig = Nf4GemmConfig()) -> torch.Tensor:
    """x [M, K] bf16 / fp16, packed uint8 [N, K / 2], absmax float32 [N, K / blocksize], table
    float32 [16] (the quant type's code values; any stride) -> [M, N] in x's dtype (float32 sums)."""
    m, k = x.shape
    n = packed.shape[0]
    blocks = absmax.shape[1] if absmax.dim() == 2 else 0
    blocksize = k // blocks if blocks else 0
    if x.element_size() != 2 or packed.dtype != torch.uint8 or tuple(packed.shape) != (n, k // 2):
        raise ValueError(f"nf4_gemm takes 16-bit x [M, K] and uint8 codes [N, K / 2]; got {x.dtype} "
                         f"{tuple(x.shape)}, {packed.dtype} {tuple(packed.shape)}")
    if (tuple(absmax.shape) != (n, blocks) or blocksize * blocks != k or blocksize < 32
            or blocksize & (blocksize - 1) or table.shape != (16,) or table.dtype != torch.float32):
        raise ValueError(f"nf4_gemm: absmax {tuple(absmax.shape)} for a {n} x {k} weight (blocks of a power of two "
                         f"of at least 32 inputs along each row) and a float32 table of 16 values ({table.dtype} "
                         f"{tuple(table.shape)} given)")
    if x.stride(1) != 1 or packed.stride(1) != 1 or absmax.stride(1) != 1:
        raise ValueError("nf4_gemm needs unit stride along K")
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n),)
    _nf4_gemm_kernel[grid](
        x, packed, absmax, table, bias if bias is not None else out, out, m, n, k, x.stride(0), packed.stride(0),
        absmax.stride(0), table.stride(0), out.stride(0), BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        BLOCKSIZE=blocksize, GROUP_M=8, HAS_BIAS=bias is not None, num_warps=config.num_warps,
        num_stages=config.num_stages, **launch_kwargs())
    return out
