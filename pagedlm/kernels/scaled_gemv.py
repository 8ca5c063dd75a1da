"""Decode-batch dispatch for 8-bit linear layers: a Triton GEMV where it beats the layer's
GEMM, the GEMM everywhere else.

``w8_gemv_or_none(x, w, scale_w, out_dtype, bias, quantize, gemm, codes)`` returns None
when no GEMV applies or wins; the caller then quantizes and runs its GEMM. The candidates run
on ``quantize(x)``'s codes: the split-K GEMV (``triton_scaled_gemv``) and the one-launch GEMV
(``triton_gemv_fused``; with per-token codes also its native 8-bit tensor-core tiles).
(Quantizing inside the one-launch GEMV, every program computing its rows' scales, measured
slower than the separate quantization launch at every 8B shape: not a candidate.)
Which one wins is timed once per (M bucket, N, K, dtypes, scheme) on first use outside
CUDA-graph capture against ``quantize`` + ``gemm``; the runner's warm-up forwards before
each graph capture run every decode batch size, so the captured graphs see decided shapes.
During capture an undecided shape takes the GEMM.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from pagedlm.kernels.gemv import fastest_agreeing

logger = logging.getLogger(__name__)

MAX_M = 16
_BUCKETS = (1, 2, 4, 8, 16)
# (bucket, N, K, x dtype, w dtype, activation codes) -> GemvConfig / FusedGemvConfig, or None = the GEMM
_choice: dict[tuple, object] = {}

Quantize = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def _bucket(m: int) -> int:
    return next(b for b in _BUCKETS if b >= m)


def _candidates(m: int, k: int, codes: bool) -> list[object]:
    """Split-K and one-launch GEMV configs; native 8-bit dots only when the activations are
    codes too (``codes``: W8A8, not weight-only)."""
    from pagedlm.kernels import triton_gemv_fused, triton_scaled_gemv  # noqa: PLC0415

    split = [c for c in triton_scaled_gemv.quick_configs(m) if triton_scaled_gemv.fits(k, c)]
    fused = [c for c in triton_gemv_fused.quick_configs(m, eight_bit=True) if triton_gemv_fused.fits(m, k, c)]
    return split + [c for c in fused if codes or not c.native]


def _run(config: object, x: torch.Tensor, w: torch.Tensor, scale_w: torch.Tensor, out_dtype: torch.dtype,
         bias: torch.Tensor | None, quantize: Quantize) -> torch.Tensor:
    """``quantize(x)``, then one of the two GEMV kernels, by the type of its config."""
    from pagedlm.kernels import triton_gemv_fused, triton_scaled_gemv  # noqa: PLC0415

    a, scale_a = quantize(x)
    if isinstance(config, triton_gemv_fused.FusedGemvConfig):
        return triton_gemv_fused.fused_gemv(a, w, scale_a, scale_w, out_dtype, bias, config)
    return triton_scaled_gemv.scaled_gemv(a, w, scale_a, scale_w, out_dtype, bias, config)


def w8_gemv_or_none(x: torch.Tensor, w: torch.Tensor, scale_w: torch.Tensor, out_dtype: torch.dtype,
                    bias: torch.Tensor | None, quantize: Quantize,
                    gemm: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
                    codes: bool) -> torch.Tensor | None:
    """x [M, K] 16-bit activations -> (x @ w.T) * scales (+ bias) through a GEMV where one
    wins; None otherwise. ``quantize(x)`` gives the GEMM's (codes, scale) (x itself and None
    for weight-only layers: ``codes`` False); ``gemm(a, scale_a)`` is the layer's GEMM
    without bias."""
    m = x.shape[0]
    if not x.is_cuda or not 1 <= m <= MAX_M or x.stride(1) != 1 or w.stride(1) != 1:
        return None
    key = (_bucket(m), w.shape[0], w.shape[1], x.dtype, w.dtype, codes)
    if key not in _choice:
        if torch.cuda.is_current_stream_capturing():
            return None
        # Timed at the bucket's row count so every M of the bucket shares the decision.
        x_t = x[:1].expand(key[0], -1).contiguous() if key[0] != m else x
        best, best_ms, gemm_ms = fastest_agreeing(
            lambda: gemm(*quantize(x_t)), _candidates(key[0], w.shape[1], codes),
            lambda c: _run(c, x_t, w, scale_w, out_dtype, None, quantize))
        logger.debug("8-bit GEMV, M=%d N=%d K=%d %s x %s: %s (%.1f us; quantize + GEMM %.1f us)", key[0],
                     w.shape[0], w.shape[1], x.dtype, w.dtype, best or "the GEMM", best_ms * 1e3, gemm_ms * 1e3)
        _choice[key] = best
    config = _choice[key]
    return None if config is None else _run(config, x, w, scale_w, out_dtype, bias, quantize)
