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

from pagedlm.kernels import reference

# Rows wider than this fall back to the reference (no model in sight comes close).
_MAX_ROW = 65536


@triton.jit
def _rms_norm_kernel(
    x_ptr, weight_ptr, out_ptr,
    stride_x, stride_out, hidden, eps,
    BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < hidden
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / hidden + eps)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + offs, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fused_add_rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr,
    stride_x, stride_res, stride_out, stride_res_out, hidden, eps,
    BLOCK_H: tl.constexpr,
):
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
    tl.store(out_ptr + row * stride_out + offs, (sf * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


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
        x2, weight, out, x2.stride(0), out.stride(0), hidden, eps, BLOCK_H=block_h, num_warps=num_warps,
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
        x2, r2, weight, out, new_residual,
        x2.stride(0), r2.stride(0), out.stride(0), new_residual.stride(0), hidden, eps,
        BLOCK_H=block_h, num_warps=num_warps,
    )
    return out.view(x.shape), new_residual.view(x.shape)
