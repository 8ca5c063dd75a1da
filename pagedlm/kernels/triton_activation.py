"""SiLU-and-mul (the SwiGLU gate) in Triton: x [T, 2I] -> silu(x[:, :I]) * x[:, I:], computed
in float32 with one rounding. A 2-D grid (rows x column blocks) keeps every SM busy even
for a single decode row of an 8B model (I = 14336)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedlm.kernels import quant_reference
from pagedlm.kernels.triton_quant import quant_limits, quantize_row

_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_out + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    # x: [..., 2 * I] -> [..., I]
    inter = x.shape[-1] // 2
    out_shape = (*x.shape[:-1], inter)
    x2 = x if (x.dim() == 2 and x.stride(-1) == 1) else x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((x2.shape[0], inter), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out.view(out_shape)
    grid = (x2.shape[0], triton.cdiv(inter, _BLOCK))
    _silu_and_mul_kernel[grid](x2, out, x2.stride(0), out.stride(0), inter, BLOCK=_BLOCK, num_warps=4)
    return out.view(out_shape)


@triton.jit
def _silu_and_mul_quant_kernel(x_ptr, codes_ptr, scale_ptr, stride_x, stride_codes, inter, qmax, qmin, min_scale,
                               BLOCK: tl.constexpr, IS_INT8: tl.constexpr):
    # One program per row, the whole row in registers: the scale needs the row's max.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    y = (gate * tl.sigmoid(gate) * up).to(x_ptr.dtype.element_ty).to(tl.float32)  # as the unfused output
    codes, scale = quantize_row(y, mask, qmax, qmin, min_scale, IS_INT8)
    tl.store(codes_ptr + row * stride_codes + cols, codes.to(codes_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + row, scale)


_MAX_QUANT_ROW = 32768  # wider rows: the two launches


def silu_and_mul_quant(x: torch.Tensor, code_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """silu_and_mul, then per-token quantization to ``code_dtype``, in one launch: (codes
    [T, I], scale [T, 1]); the same bytes as ``per_token_quant(silu_and_mul(x))``."""
    inter = x.shape[-1] // 2
    x2 = x if (x.dim() == 2 and x.stride(-1) == 1) else x.reshape(-1, x.shape[-1]).contiguous()
    if inter > _MAX_QUANT_ROW or x2.shape[0] == 0 or x.dtype == torch.float32:
        return quant_reference.per_token_quant(silu_and_mul(x2), code_dtype)
    codes = torch.empty((x2.shape[0], inter), dtype=code_dtype, device=x.device)
    scale = torch.empty((x2.shape[0], 1), dtype=torch.float32, device=x.device)
    qmax, qmin = quant_limits(code_dtype)
    block = triton.next_power_of_2(inter)
    _silu_and_mul_quant_kernel[(x2.shape[0],)](
        x2, codes, scale, x2.stride(0), codes.stride(0), inter, qmax, qmin, quant_reference.MIN_SCALE,
        BLOCK=block, IS_INT8=code_dtype == torch.int8, num_warps=min(16, max(4, block // 1024)),
    )
    return codes, scale
