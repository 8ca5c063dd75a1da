"""Decode-batch dispatch for 8-bit linear layers: a Triton GEMV where it beats the layer's
GEMM, the GEMM everywhere else.

``scaled_gemv_or_none(a, w, scale_a, scale_b, out_dtype, bias, baseline)`` returns None when
no GEMV applies or wins; the caller then runs its GEMM. The candidates: the split-K GEMV
(``triton_scaled_gemv``) and the one-launch GEMV (``triton_gemv_fused``; with activation
codes also its native 8-bit tensor-core tiles, and the CUDA C++ kernel ``cuda_w8a8`` where its
library builds). Which one wins is timed once per (M bucket,
N, K, code dtypes) on first use outside CUDA-graph capture against ``baseline`` (the layer's
own GEMM on the same tensors), the way a decode step runs it (``gemv.fastest_agreeing``);
the runner's warm-up forwards before each graph capture run every decode batch size, so the
captured graphs see decided shapes. During capture an undecided shape takes the GEMM. The
decision is kept on disk for later starts (``tuning_cache``).

(Quantizing the activations inside the one-launch GEMV, every program computing its rows'
scales, measured slower than the separate quantization launch at every 8B shape: the
activations come in quantized.)
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from pagedlm.kernels import tuning_cache
from pagedlm.kernels.gemv import fastest_agreeing

logger = logging.getLogger(__name__)

MAX_M = 16
_BUCKETS = (1, 2, 4, 8, 16)
# (bucket, N, K, a dtype, w dtype, per-token scale_a) -> GemvConfig / FusedGemvConfig, or None = the GEMM
_choice: dict[tuple, object] = {}


def _bucket(m: int) -> int:
    return next(b for b in _BUCKETS if b >= m)


def _candidates(m: int, k: int, codes: bool) -> list[object]:
    """Split-K and one-launch GEMV configs; native 8-bit dots only when the activations are
    codes too (``codes``: W8A8, not weight-only)."""
    from pagedlm.kernels import triton_gemv_fused, triton_scaled_gemv  # noqa: PLC0415

    split = [c for c in triton_scaled_gemv.quick_configs(m) if triton_scaled_gemv.fits(k, c)]
    fused = [c for c in triton_gemv_fused.quick_configs(m, eight_bit=True) if triton_gemv_fused.fits(m, k, c)]
    return split + [c for c in fused if codes or not c.native] + (_cuda_candidates(m, k) if codes else [])


def _cuda_candidates(m: int, k: int) -> list[object]:
    """The CUDA W8A8 kernel's configs where its library builds (codes times codes, K in chunks of 128)."""
    from pagedlm.kernels import cuda_w8a8  # noqa: PLC0415

    if k % 128 or not cuda_w8a8.available():
        return []
    return cuda_w8a8.quick_configs(m)


def _config_types() -> tuple[type, ...]:
    from pagedlm.kernels import cuda_w8a8, triton_gemv_fused, triton_scaled_gemv  # noqa: PLC0415

    return triton_scaled_gemv.ScaledGemvConfig, triton_gemv_fused.FusedGemvConfig, cuda_w8a8.CudaW8A8Config


def _run(config: object, a: torch.Tensor, w: torch.Tensor, scale_a: torch.Tensor | None, scale_b: torch.Tensor,
         out_dtype: torch.dtype, bias: torch.Tensor | None) -> torch.Tensor:
    """One of the GEMV kernels, by the type of its config."""
    from pagedlm.kernels import cuda_w8a8, triton_gemv_fused, triton_scaled_gemv  # noqa: PLC0415
    from pagedlm.kernels.tickets import ticket_counters  # noqa: PLC0415

    if isinstance(config, cuda_w8a8.CudaW8A8Config):
        return cuda_w8a8.gemm(a, w, scale_a, scale_b, out_dtype, bias, config, ticket_counters(a.device, "w8a8"))
    if isinstance(config, triton_gemv_fused.FusedGemvConfig):
        return triton_gemv_fused.fused_gemv(a, w, scale_a, scale_b, out_dtype, bias, config)
    return triton_scaled_gemv.scaled_gemv(a, w, scale_a, scale_b, out_dtype, bias, config)


def _tune(a: torch.Tensor, w: torch.Tensor, scale_a: torch.Tensor | None, scale_b: torch.Tensor,
          out_dtype: torch.dtype, baseline: Callable[[], torch.Tensor]) -> object:
    """The fastest GEMV config if it beats ``baseline`` at this shape and agrees with it, else None."""
    codes = a.element_size() == 1
    best, best_ms, baseline_ms = fastest_agreeing(
        baseline, _candidates(a.shape[0], a.shape[1], codes),
        lambda c: _run(c, a, w, scale_a, scale_b, out_dtype, None))
    logger.debug("8-bit GEMV, M=%d N=%d K=%d %s x %s: %s (%.1f us; the GEMM %.1f us)", a.shape[0], w.shape[0],
                 w.shape[1], a.dtype, w.dtype, best or "the GEMM", best_ms * 1e3, baseline_ms * 1e3)
    return best


def scaled_gemv_or_none(a: torch.Tensor, w: torch.Tensor, scale_a: torch.Tensor | None, scale_b: torch.Tensor,
                        out_dtype: torch.dtype, bias: torch.Tensor | None,
                        baseline: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]) -> torch.Tensor | None:
    """(a @ w.T) * scale_a * scale_b (+ bias) through a GEMV where one wins; None otherwise.
    ``baseline(a, scale_a)`` computes the same product without bias through the layer's GEMM."""
    m = a.shape[0]
    if not a.is_cuda or not 1 <= m <= MAX_M or a.stride(1) != 1 or w.stride(1) != 1:
        return None
    key = (_bucket(m), w.shape[0], w.shape[1], a.dtype, w.dtype, scale_a is not None and scale_a.numel() > 1)
    if key not in _choice:
        if torch.cuda.is_current_stream_capturing():
            return None
        # Timed at the bucket's row count so every M of the bucket shares the decision.
        rows = key[0]
        a_t = a[:1].expand(rows, -1).contiguous() if rows != m else a
        sa_t = scale_a if scale_a is None or scale_a.numel() == 1 else scale_a[:1].expand(rows, 1).contiguous()
        _choice[key] = tuning_cache.cached("scaled_gemv", key, a.device, _config_types(),
                                           lambda: _tune(a_t, w, sa_t, scale_b, out_dtype, lambda: baseline(a_t, sa_t)))
    config = _choice[key]
    if config is None or not _runs_here(config, a, w, scale_a, scale_b, out_dtype):
        return None
    return _run(config, a, w, scale_a, scale_b, out_dtype, bias)


def _runs_here(config: object, a: torch.Tensor, w: torch.Tensor, scale_a: torch.Tensor | None,
               scale_b: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """False for a CUDA-kernel choice these operands do not fit (a view) or this machine cannot
    build (a choice read from the disk cache): the caller's GEMM runs instead."""
    from pagedlm.kernels import cuda_w8a8  # noqa: PLC0415

    if not isinstance(config, cuda_w8a8.CudaW8A8Config):
        return True
    return cuda_w8a8.available(a.device) and cuda_w8a8.fits(a, w, scale_a, scale_b, out_dtype)
