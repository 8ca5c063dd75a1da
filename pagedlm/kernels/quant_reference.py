"""PyTorch references of the 8-bit GEMM ops: the CPU path and the oracle of the CUDA ones
(``pagedlm.kernels.quant_cuda``), which keep these signatures.

Scales are float32. ``b`` is the weight as a [K, N] *column-major* view (the [N, K]
row-major checkpoint weight transposed), the layout ``torch._scaled_mm`` and ``torch._int_mm``
want. ``scale_a`` is [M, 1] (per token) or [1, 1] (per tensor); ``scale_b`` is [1, N] (per
output channel; per-tensor weight scales are expanded at load).
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
INT8_MAX = 127.0
# Smallest scale: an all-zero row quantizes to zeros instead of dividing by zero.
MIN_SCALE = 1e-12


def qmax(dtype: torch.dtype) -> float:
    return FP8_MAX if dtype == FP8_DTYPE else INT8_MAX


def quantize_with_scale(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x / scale rounded to ``dtype`` (fp8 e4m3: saturating; int8: round half to even, clamped)."""
    limit = qmax(dtype)
    y = x.float() / scale
    if dtype == torch.int8:
        y = y.round()
    return y.clamp(-limit if dtype == FP8_DTYPE else -limit - 1, limit).to(dtype)


def per_token_quant(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-token quantization. x [M, K] -> (q [M, K] ``dtype``, scale [M, 1] f32)."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = (amax / qmax(dtype)).clamp(min=MIN_SCALE)
    return quantize_with_scale(x, scale, dtype), scale


def per_tensor_quant(x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Static (``scale`` given, [1, 1]) or dynamic (one scale for the whole tensor) quantization."""
    if scale is None:
        scale = (x.abs().amax().float() / qmax(dtype)).clamp(min=MIN_SCALE).reshape(1, 1)
    return quantize_with_scale(x, scale, dtype), scale


def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor,
              out_dtype: torch.dtype, bias: torch.Tensor | None = None) -> torch.Tensor:
    """(a * scale_a) @ (b * scale_b) (+ bias) for fp8 or int8 a [M, K] and b [K, N], in float32."""
    y = (a.float() @ b.float()) * scale_a * scale_b
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def weight_only_mm(x: torch.Tensor, b: torch.Tensor, scale_b: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ (b * scale_b) (+ bias), activations unquantized (W8A16); the result in x's dtype."""
    y = (x.float() @ b.float()) * scale_b
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)
