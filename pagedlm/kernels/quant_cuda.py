"""CUDA versions of the 8-bit GEMM ops, with the signatures of ``quant_reference``.

- fp8: ``torch._scaled_mm`` (cuBLASLt) with row-wise scales (scale_a [M, 1], scale_b [1, N],
  float32, bf16 output; Hopper and later), or, where row-wise scaling is unavailable (Ada),
  unit scales with a float32 output and the scales applied after.
- int8: ``torch._int_mm`` (int32 accumulation) then the scale epilogue. cuBLAS' int8 GEMM needs
  more than 16 rows, so short batches are padded with zero rows.
- W8A16: the weight dequantized to the activation dtype, then a plain GEMM (saves memory,
  not time).
The bias is added after the GEMM (row-wise ``_scaled_mm`` restricts its bias).
"""

from __future__ import annotations

import torch

_INT_MM_MIN_ROWS = 17


def _add_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return y if bias is None else y + bias.to(y.dtype)


def _scaled_mm_out(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                   out_dtype: torch.dtype) -> torch.Tensor:
    out = torch._scaled_mm(a, b, scale_a=scale_a, scale_b=scale_b, out_dtype=out_dtype)
    return out[0] if isinstance(out, tuple) else out  # torch < 2.5 also returned amax


def fp8_scaled_mm_rowwise(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                          out_dtype: torch.dtype, bias: torch.Tensor | None = None) -> torch.Tensor:
    if scale_a.numel() == 1:  # a static per-tensor activation scale, as a row-wise one
        scale_a = scale_a.reshape(1, 1).expand(a.shape[0], 1).contiguous()
    y = _scaled_mm_out(a, b, scale_a, scale_b, torch.bfloat16)  # row-wise scaling writes bf16 only
    return _add_bias(y if out_dtype == torch.bfloat16 else y.to(out_dtype), bias)


def fp8_scaled_mm_unit(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                       out_dtype: torch.dtype, bias: torch.Tensor | None = None) -> torch.Tensor:
    one = torch.ones((), dtype=torch.float32, device=a.device)
    y = _scaled_mm_out(a, b, one, one, torch.float32)
    return _add_bias((y * scale_a * scale_b).to(out_dtype), bias)


def int8_scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
                   out_dtype: torch.dtype, bias: torch.Tensor | None = None) -> torch.Tensor:
    num_rows = a.shape[0]
    if num_rows < _INT_MM_MIN_ROWS:
        a = torch.nn.functional.pad(a, (0, 0, 0, _INT_MM_MIN_ROWS - num_rows))
    acc = torch._int_mm(a, b)[:num_rows]  # [M, N] int32
    return _add_bias((acc.float() * scale_a * scale_b).to(out_dtype), bias)


def weight_only_mm(x: torch.Tensor, b: torch.Tensor, scale_b: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    y = (x @ b.to(x.dtype)) * scale_b.to(x.dtype)
    return _add_bias(y, bias)
