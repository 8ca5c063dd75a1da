"""Decode GEMV dispatch for the unquantized linear method: the Triton split-K GEMV
(pagedlm.kernels.triton_gemv) where it beats cuBLAS for a shape, F.linear everywhere else.

``gemv_linear(x, weight, bias)`` returns None when the GEMV does not apply or does not win;
the caller then runs F.linear. Whether it wins is timed once per (M, N, K, dtype) on first
use outside CUDA-graph capture (the runner's warm-up and graph warm-up steps run every
decode shape before capture), against cuBLAS on the same tensors; the winner is kept, in
memory and on disk for later starts (``tuning_cache``).
During capture an untimed shape takes F.linear.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from pagedlm.kernels import precompile, tuning_cache
from pagedlm.kernels.cpu_linear import cpu_linear
from pagedlm.kernels.timing import decode_time_ms

logger = logging.getLogger(__name__)

MAX_M = 8  # the decode batch sizes the GEMV is meant for
_choice: dict[tuple[int, int, int, torch.dtype], object] = {}  # shape -> GemvConfig, or None = cuBLAS


def gemv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def _applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.is_cuda and x.dim() == 2 and 1 <= x.shape[0] <= MAX_M and x.dtype in (torch.bfloat16, torch.float16)
            and weight.dtype == x.dtype and x.stride(1) == 1 and weight.stride(1) == 1)


def fastest_agreeing(baseline: Callable[[], torch.Tensor], configs: Iterable[object],
                     run: Callable[[object], torch.Tensor]) -> tuple[object | None, float, float]:
    """The config whose ``run(config)`` agrees with ``baseline()`` (1e-2 relative) and beats it
    by time: (config or None when none does, its ms, the baseline's ms). A config that raises
    (e.g. more shared memory than the card has) is no candidate."""
    configs = list(configs)
    expect = baseline().float()
    precompile.warm([lambda c=config: run(c) for config in configs], expect.device)  # compiles side by side
    baseline_ms = decode_time_ms(baseline, expect.device)
    best, best_ms = None, baseline_ms
    for config in configs:
        try:
            out = run(config).float()
        except Exception:  # noqa: BLE001
            continue
        if (out - expect).norm() > 1e-2 * expect.norm() + 1e-6:
            continue
        try:
            ms = decode_time_ms(lambda c=config: run(c), expect.device)
        except RuntimeError:  # noqa: PERF203 - a kernel that cannot be captured is no candidate
            continue
        if ms < best_ms:
            best, best_ms = config, ms
    return best, best_ms, baseline_ms


def _run(config: object, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One of the two GEMV kernels, by the type of its config."""
    from pagedlm.kernels import triton_gemv, triton_gemv_fused  # noqa: PLC0415

    if isinstance(config, triton_gemv_fused.FusedGemvConfig):
        return triton_gemv_fused.fused_gemv(x, weight, None, None, x.dtype, bias, config)
    return triton_gemv.gemv(x, weight, bias, config)


def candidates(m: int, k: int) -> list[object]:
    from pagedlm.kernels import triton_gemv, triton_gemv_fused  # noqa: PLC0415

    fused = [c for c in triton_gemv_fused.quick_configs(m) if triton_gemv_fused.fits(m, k, c)]
    return triton_gemv.quick_configs() + fused


def _config_types() -> tuple[type, ...]:
    from pagedlm.kernels import triton_gemv, triton_gemv_fused  # noqa: PLC0415

    return triton_gemv.GemvConfig, triton_gemv_fused.FusedGemvConfig


def tune(x: torch.Tensor, weight: torch.Tensor) -> object:
    """The fastest GEMV config for this shape if it beats cuBLAS, else None."""
    best, best_ms, cublas_ms = fastest_agreeing(lambda: F.linear(x, weight), candidates(*x.shape),
                                                lambda c: _run(c, x, weight, None))
    logger.debug("bf16 GEMV, M=%d N=%d K=%d: %s (%.1f us; cuBLAS %.1f us)", x.shape[0], weight.shape[0],
                 weight.shape[1], best or "cuBLAS", best_ms * 1e3, cublas_ms * 1e3)
    return best


def gemv_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """x @ weight.T (+ bias) through the GEMV when it wins for this shape; None otherwise."""
    if not _applies(x, weight):
        return None
    key = (x.shape[0], weight.shape[0], weight.shape[1], x.dtype)
    if key not in _choice:
        if torch.cuda.is_current_stream_capturing():
            return None
        _choice[key] = tuning_cache.cached("gemv", key, x.device, _config_types(), lambda: tune(x, weight))
    config = _choice[key]
    return None if config is None else _run(config, x, weight, bias)


def unquantized_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """What the unquantized linear method's apply() can call: the GEMV where it wins, else F.linear
    (oneDNN's GEMM for float32 on the CPU: ``cpu_linear``)."""
    if x.device.type == "cpu":
        return cpu_linear(x, weight, bias)
    out = gemv_linear(x, weight, bias)
    return out if out is not None else F.linear(x, weight, bias)
