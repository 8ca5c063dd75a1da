"""RMSNorm and fused residual-add + RMSNorm in Triton: one program per row, the whole row
in registers (one read of each input, one write of each output).

Same semantics as ``reference.rms_norm`` / ``reference.fused_add_rms_norm``: the sum
x + residual is rounded to its dtype (as torch does) before it is normalised, and the
normalisation and weight multiply run in float32 with one final rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedlm.kernels import quant_reference, reference
from pagedlm.kernels.triton_quant import quant_limits, quantize_row
from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue

# Rows wider than this fall back to the reference (no model in sight comes close).
_MAX_ROW = 65536


@triton.jit
def _store_normed(y, out_ptr, scale_ptr, row, stride_out, offs, mask, round_ty, qmax, qmin, min_scale,
                  QUANT: tl.constexpr, IS_INT8: tl.constexpr):
    """The normalised row: as it is, or (QUANT) rounded to the model dtype (what the unfused
    path hands its quantizer) and quantized per token into 8-bit codes plus the row's scale."""
    if QUANT:
        y, scale = quantize_row(y.to(round_ty).to(tl.float32), mask, qmax, qmin, min_scale, IS_INT8)
        tl.store(scale_ptr + row, scale)
    tl.store(out_ptr + row * stride_out + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_kernel(
    x_ptr, weight_ptr, out_ptr, scale_ptr,
    stride_x, stride_out, hidden, eps, qmax, qmin, min_scale,
    BLOCK_H: tl.constexpr, QUANT: tl.constexpr = False, IS_INT8: tl.constexpr = False, PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < hidden
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    _store_normed(x * rstd * w, out_ptr, scale_ptr, row, stride_out, offs, mask, x_ptr.dtype.element_ty, qmax, qmin,
                  min_scale, QUANT, IS_INT8)


@triton.jit
def _fused_add_rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr, scale_ptr,
    stride_x, stride_res, stride_out, stride_res_out, hidden, eps, qmax, qmin, min_scale,
    BLOCK_H: tl.constexpr, QUANT: tl.constexpr = False, IS_INT8: tl.constexpr = False, PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < hidden
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(residual_ptr + row * stride_res + offs, mask=mask, other=0.0).to(tl.float32)
    # Round the sum as torch's `x + residual` does, so both outputs match the reference.
    s = (x + r).to(residual_out_ptr.dtype.element_ty)
    tl.store(residual_out_ptr + row * stride_res_out + offs, s, mask=mask)
    sf = s.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(sf * sf, axis=0) / hidden + eps)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    _store_normed(sf * rstd * w, out_ptr, scale_ptr, row, stride_out, offs, mask, residual_out_ptr.dtype.element_ty,
                  qmax, qmin, min_scale, QUANT, IS_INT8)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, hidden] with unit stride along hidden (a view where possible)."""
    if x.dim() == 2 and x.stride(-1) == 1:
        return x
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _launch_params(hidden: int) -> tuple[int, int]:
    block_h = triton.next_power_of_2(hidden)
    num_warps = 4 if block_h <= 2048 else (8 if block_h <= 8192 else 16)
    return block_h, num_warps


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x: [..., H] -> same shape, x.dtype
    hidden = x.shape[-1]
    if hidden > _MAX_ROW or x.numel() == 0:
        return reference.rms_norm(x, weight, eps)
    x2 = _rows(x)
    out_dtype = torch.result_type(x, weight) if x.dtype == torch.float32 else x.dtype
    out = torch.empty(x2.shape, dtype=out_dtype, device=x.device)
    block_h, num_warps = _launch_params(hidden)
    _rms_norm_kernel[(x2.shape[0],)](
        x2, weight, out, out, x2.stride(0), out.stride(0), hidden, eps, 0.0, 0.0, 0.0, BLOCK_H=block_h,
        num_warps=num_warps, **launch_kwargs(),
    )
    return out.view(x.shape)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual) as new tensors; the inputs are untouched."""
    hidden = x.shape[-1]
    if hidden > _MAX_ROW or x.numel() == 0 or x.shape != residual.shape:
        return reference.fused_add_rms_norm(x, residual, weight, eps)
    x2, r2 = _rows(x), _rows(residual)
    res_dtype = torch.result_type(x, residual)
    out_dtype = torch.result_type(x, weight) if res_dtype == torch.float32 else res_dtype
    new_residual = torch.empty(x2.shape, dtype=res_dtype, device=x.device)
    out = torch.empty(x2.shape, dtype=out_dtype, device=x.device)
    block_h, num_warps = _launch_params(hidden)
    _fused_add_rms_norm_kernel[(x2.shape[0],)](
        x2, r2, weight, out, new_residual, out,
        x2.stride(0), r2.stride(0), out.stride(0), new_residual.stride(0), hidden, eps, 0.0, 0.0, 0.0,
        BLOCK_H=block_h, num_warps=num_warps, **launch_kwargs(),
    )
    return out.view(x.shape), new_residual.view(x.shape)


def _codes_and_scale(rows: int, hidden: int, code_dtype: torch.dtype, device: torch.device):
    codes = torch.empty((rows, hidden), dtype=code_dtype, device=device)
    scale = torch.empty((rows, 1), dtype=torch.float32, device=device)
    return codes, scale


def rms_norm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   code_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """rms_norm, then per-token quantization to ``code_dtype``, in one launch: (codes [T, H],
    scale [T, 1]); the same bytes as ``quant_reference.per_token_quant(rms_norm(x))``."""
    hidden = x.shape[-1]
    if hidden > _MAX_ROW or x.numel() == 0 or x.dtype == torch.float32:
        return quant_reference.per_token_quant(reference.rms_norm(x, weight, eps).reshape(-1, hidden), code_dtype)
    x2 = _rows(x)
    codes, scale = _codes_and_scale(x2.shape[0], hidden, code_dtype, x.device)
    block_h, num_warps = _launch_params(hidden)
    qmax, qmin = quant_limits(code_dtype)
    _rms_norm_kernel[(x2.shape[0],)](
        x2, weight, codes, scale, x2.stride(0), codes.stride(0), hidden, eps, qmax, qmin, quant_reference.MIN_SCALE,
        BLOCK_H=block_h, QUANT=True, IS_INT8=code_dtype == torch.int8, num_warps=num_warps, **launch_kwargs(),
    )
    return codes, scale


def fused_add_rms_norm_quant(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float,
                             code_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fused_add_rms_norm with its normalised output quantized per token in the same launch:
    (codes [T, H], scale [T, 1], x + residual)."""
    hidden = x.shape[-1]
    if hidden > _MAX_ROW or x.numel() == 0 or x.shape != residual.shape or x.dtype == torch.float32:
        normed, new_residual = reference.fused_add_rms_norm(x, residual, weight, eps)
        return (*quant_reference.per_token_quant(normed.reshape(-1, hidden), code_dtype), new_residual)
    x2, r2 = _rows(x), _rows(residual)
    new_residual = torch.empty(x2.shape, dtype=torch.result_type(x, residual), device=x.device)
    codes, scale = _codes_and_scale(x2.shape[0], hidden, code_dtype, x.device)
    block_h, num_warps = _launch_params(hidden)
    qmax, qmin = quant_limits(code_dtype)
    _fused_add_rms_norm_kernel[(x2.shape[0],)](
        x2, r2, weight, codes, new_residual, scale,
        x2.stride(0), r2.stride(0), codes.stride(0), new_residual.stride(0), hidden, eps, qmax, qmin,
        quant_reference.MIN_SCALE, BLOCK_H=block_h, QUANT=True, IS_INT8=code_dtype == torch.int8,
        num_warps=num_warps, **launch_kwargs(),
    )
    return codes, scale, new_residual.view(x.shape)
