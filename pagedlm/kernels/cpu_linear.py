"""Linear layers on the CPU: oneDNN's float32 GEMM on the plain [out, in] weight.

``F.linear`` on the CPU runs MKL's sgemm. On the 2-core benchmark box (an AMD EPYC, where MKL
does not take its AVX-512 kernels) oneDNN's GEMM (``torch.ops.mkldnn._linear_pointwise``, the
op torch.compile's CPU backend emits for linear layers) is 1.3-2x faster at the engine's
shapes and about 10x faster for a one-row LM head (BENCHMARKS.md, session 19). It reads the
weight as it is (no repacked copy, so no extra memory) and computes in float32 (oneDNN's
default math mode is strict): the result equals F.linear's up to the summation order.

Everything else (other dtypes, autograd, a build without oneDNN) takes F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (_ONEDNN and x.device.type == "cpu" and x.dim() >= 2 and x.dtype == torch.float32
            and weight.dtype == torch.float32 and weight.dim() == 2
            and (bias is None or bias.dtype == torch.float32) and not torch.is_grad_enabled())


def cpu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T (+ bias), F.linear's contract; oneDNN where ``applies``."""
    if applies(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
