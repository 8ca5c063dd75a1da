"""SiLU-and-mul (the SwiGLU gate) in Triton: x [T, 2I] -> silu(x[:, :I]) * x[:, I:], computed
in float32 with one rounding. A 2-D grid (rows x column blocks) keeps every SM busy even
for a single decode row of an 8B model (I = 14336)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue

_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_out, inter, BLOCK: tl.constexpr, PDL: tl.constexpr = False):
    pdl_prologue(PDL)
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
    _silu_and_mul_kernel[grid](x2, out, x2.stride(0), out.stride(0), inter, BLOCK=_BLOCK, num_warps=4,
                               **launch_kwargs())
    return out.view(out_shape)
