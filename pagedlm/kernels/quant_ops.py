"""The 8-bit GEMM ops a quantized layer calls, picked once per device.

On CPU: the references (``quant_reference``). On CUDA: the kernels of ``quant_cuda`` and
``triton_quant``, each first run once on a small problem against its reference; one that
raises or disagrees is replaced by the next candidate (finally the reference) with a log
line, so an unsupported torch/driver/card combination degrades to a slower path instead of
failing at start-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import torch

from pagedlm.kernels import quant_reference as ref

logger = logging.getLogger("pagedlm")


@dataclass(frozen=True)
class QuantOps:
    per_token_quant: Callable[[torch.Tensor, torch.dtype], tuple[torch.Tensor, torch.Tensor]]
    per_tensor_quant: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    fp8_scaled_mm: Callable[..., torch.Tensor]
    int8_scaled_mm: Callable[..., torch.Tensor]
    weight_only_mm: Callable[..., torch.Tensor]
    fp8_gemm: bool  # False: the device has no fp8 GEMM (fp8 weights run as W8A16)
    # The per-token quantizer picked for each code dtype (``per_token_quant`` dispatches on it).
    per_token_impl: dict = field(default_factory=dict)


REFERENCE_OPS = QuantOps(ref.per_token_quant, ref.per_tensor_quant, ref.scaled_mm, ref.scaled_mm,
                         ref.weight_only_mm, fp8_gemm=True,
                         per_token_impl={torch.int8: ref.per_token_quant, ref.FP8_DTYPE: ref.per_token_quant})


def fp8_gemm_supported(device: torch.device) -> bool:
    """fp8 tensor-core GEMMs need compute capability 8.9 (Ada) or later."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device) >= (8, 9)


def _probe_gemm(fn: Callable[..., torch.Tensor], dtype: torch.dtype, device: torch.device) -> bool:
    """Run ``fn`` on a small problem (5 rows: the padded/unaligned case) against the reference."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(5, 64, generator=g).to(device, torch.bfloat16)
    w = torch.randn(96, 64, generator=g).to(device, torch.bfloat16)
    a, scale_a = ref.per_token_quant(x, dtype)
    wq, w_scale = ref.per_token_quant(w, dtype)  # per output channel
    bias = torch.randn(96, generator=g).to(device, torch.bfloat16)
    args = (a, wq.t(), scale_a, w_scale.reshape(1, -1), torch.bfloat16, bias)
    out = fn(*args).float()
    expect = ref.scaled_mm(*args).float()
    return bool(torch.allclose(out, expect, rtol=2e-2, atol=2e-2 * expect.abs().max().item()))


def _probe_quant(fn: Callable, dtype: torch.dtype, device: torch.device) -> bool:
    """Same scales; codes equal but for rare neighbours (x / scale on a rounding boundary)."""
    x = torch.randn(7, 4096 + 64, generator=torch.Generator().manual_seed(1)).to(device, torch.bfloat16)
    q, scale = fn(x, dtype)
    rq, rscale = ref.per_token_quant(x, dtype)
    if not torch.allclose(scale, rscale, rtol=1e-6, atol=0):
        return False
    a, b = q.float(), rq.float()
    # One step apart at most: 1 for int8, one mantissa step (1/8 of the value) for fp8 e4m3.
    step = 1.0 if dtype == torch.int8 else 0.125 * torch.maximum(a.abs(), b.abs()) + 2.0**-9
    differs = a != b
    return bool(((a - b).abs() <= step * 1.001).all() and differs.float().mean() < 1e-3)


def _first_working(name: str, candidates: list[tuple[str, Callable]], probe: Callable[[Callable], bool],
                   fallback: Callable) -> Callable:
    for label, fn in candidates:
        try:
            if probe(fn):
                logger.debug("%s: %s", name, label)
                return fn
            logger.warning("%s: %s disagrees with the reference on this device; trying the next kernel", name, label)
        except Exception as exc:  # an unsupported op/shape/arch: fall through to the next candidate
            logger.warning("%s: %s is unavailable on this device (%s); trying the next kernel", name, label,
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    logger.warning("%s: using the PyTorch reference (slow)", name)
    return fallback


def _per_token_quantizers(device: torch.device, fp8_gemm: bool) -> dict:
    impl = {torch.int8: ref.per_token_quant, ref.FP8_DTYPE: ref.per_token_quant}
    try:
        from pagedlm.kernels import triton_quant
    except ImportError:
        logger.warning("per-token quantization: Triton is not installed; using the PyTorch reference")
        return impl
    for dtype in (torch.int8, ref.FP8_DTYPE) if fp8_gemm else (torch.int8,):
        impl[dtype] = _first_working(f"{dtype} per-token quantization", [("triton", triton_quant.per_token_quant)],
                                     lambda fn, dtype=dtype: _probe_quant(fn, dtype, device), ref.per_token_quant)
    return impl


@lru_cache(maxsize=None)
def quant_ops(device: torch.device) -> QuantOps:
    if device.type != "cuda":
        return REFERENCE_OPS
    from pagedlm.kernels import quant_cuda

    fp8_gemm = fp8_gemm_supported(device)
    impl = _per_token_quantizers(device, fp8_gemm)

    def per_token(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return impl[dtype](x, dtype)

    fp8_mm = ref.scaled_mm
    if fp8_gemm:
        fp8_mm = _first_working("fp8 GEMM", [("torch._scaled_mm row-wise", quant_cuda.fp8_scaled_mm_rowwise),
                                             ("torch._scaled_mm unit scales", quant_cuda.fp8_scaled_mm_unit)],
                                lambda fn: _probe_gemm(fn, ref.FP8_DTYPE, device), ref.scaled_mm)
    int8_mm = _first_working("int8 GEMM", [("torch._int_mm", quant_cuda.int8_scaled_mm)],
                             lambda fn: _probe_gemm(fn, torch.int8, device), ref.scaled_mm)
    return QuantOps(per_token, ref.per_tensor_quant, fp8_mm, int8_mm, quant_cuda.weight_only_mm, fp8_gemm, impl)


def gemm_for(ops: QuantOps, is_fp8: bool, k: int, n: int) -> Callable[..., torch.Tensor]:
    """The 8-bit GEMM for a [K -> N] layer: cuBLAS wants K and N multiples of 16 (fp8) or 8
    (int8); a layer that is not aligned takes the reference (no model in sight has one)."""
    align = 16 if is_fp8 else 8
    if k % align or n % align:
        return ref.scaled_mm
    return ops.fp8_scaled_mm if is_fp8 else ops.int8_scaled_mm
