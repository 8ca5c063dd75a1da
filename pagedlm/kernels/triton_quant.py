"""Dynamic per-token activation quantization (fp8 e4m3 or int8) in Triton: one program per
row, the whole row in registers: one read of x, one write of the codes and the row's scale.

Same semantics as ``quant_reference.per_token_quant``: scale = max(|x|) / qmax (at least
MIN_SCALE), codes = x / scale, saturated (fp8) or rounded half to even and clamped (int8).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedlm.kernels import quant_reference as ref
from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue

_MAX_ROW = 32768  # wider rows use the reference


@triton.jit
def quantize_row(x, mask, qmax, qmin, min_scale, IS_INT8: tl.constexpr):
    """One row in registers (float32; masked lanes 0) -> (codes as float32, the row's scale):
    scale = max(|x|) / qmax (at least min_scale), codes = x / scale (the IEEE quotient, as
    torch), int8 rounded half to even, clamped to [qmin, qmax]. The fused norms use it too."""
    scale = tl.maximum(tl.max(tl.where(mask, tl.abs(x), 0.0), axis=0) / qmax, min_scale)
    # x / scale without a division per element (Triton's `/` is approximate, div_rn is a long
    # sequence): the correctly rounded reciprocal once per row, a product, and one Markstein
    # correction with two FMAs (the product's error is exact in an FMA). The codes equalled
    # torch's x / scale on 147M values per code type (H200; BENCHMARKS.md, 2026-11-30) at half
    # the time of div_rn for a 14336-wide row.
    inv = tl.math.div_rn(1.0, scale)
    q = x * inv
    y = tl.fma(tl.fma(-q, scale, x), inv, q)
    if IS_INT8:
        # round half to even, as torch.round
        r = tl.floor(y + 0.5)
        r = tl.where((r - y == 0.5) & ((r.to(tl.int32) & 1) == 1), r - 1.0, r)
        y = r
    return tl.minimum(tl.maximum(y, qmin), qmax), scale


@triton.jit
def _per_token_quant_kernel(x_ptr, q_ptr, scale_ptr, stride_x, stride_q, hidden, qmax, qmin, min_scale,
                            IS_INT8: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < hidden
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    y, scale = quantize_row(x, mask, qmax, qmin, min_scale, IS_INT8)
    tl.store(q_ptr + row * stride_q + offs, y.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + row, scale)


def quant_limits(dtype: torch.dtype) -> tuple[float, float]:
    """(qmax, qmin) of the codes: fp8 symmetric, int8 down to -128."""
    limit = ref.qmax(dtype)
    return limit, (-limit - 1.0 if dtype == torch.int8 else -limit)


def per_token_quant(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = x.shape[-1]
    if x.dim() != 2 or x.stride(-1) != 1 or hidden > _MAX_ROW or x.shape[0] == 0:
        return ref.per_token_quant(x, dtype)
    q = torch.empty(x.shape, dtype=dtype, device=x.device)
    scale = torch.empty((x.shape[0], 1), dtype=torch.float32, device=x.device)
    qmax, qmin = quant_limits(dtype)
    block = triton.next_power_of_2(hidden)
    _per_token_quant_kernel[(x.shape[0],)](
        x, q, scale, x.stride(0), q.stride(0), hidden, qmax, qmin,
        ref.MIN_SCALE, IS_INT8=dtype == torch.int8, BLOCK=block, num_warps=min(16, max(4, block // 1024)),
        **launch_kwargs())
    return q, scale
