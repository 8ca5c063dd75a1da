"""Which kernel runs a block-wise fp8 layer (W8A16: fp8 codes, one scale per [bn, bk] block,
16-bit activations) on a GPU, decided once per (M bucket, shape) on first use.

- up to 8 rows: the one-launch GEMV (``triton_gemv_fused``) with each program's block row of
  scales folded into the activations;
- up to ``MAX_TILED_M`` rows: the tiled block-scaled GEMM (``triton_block_fp8``);
- each against the layer's own product (``baseline``: dequantize, then the dense GEMM), which
  stays wherever no candidate agrees with it and beats it, and above ``MAX_TILED_M`` rows
  (compute-bound GEMMs, where the dequantized copy costs little against the product).

Candidates are timed the way a decode step runs them (``timing.decode_time_ms``), at the
bucket's largest row count, outside CUDA-graph capture (the runner's warm-up runs every decode
batch size before capture; during capture an undecided shape takes the baseline); choices are
kept on disk for later starts (``tuning_cache``). ``block_fp8_linear`` returns None where the
baseline runs.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from pagedlm.kernels import tuning_cache
from pagedlm.kernels.gemv import fastest_agreeing

logger = logging.getLogger(__name__)

GEMV_BUCKETS = (1, 2, 4, 8)
TILED_BUCKETS = (16, 32, 64, 128, 256, 512, 1024)
MAX_TILED_M = TILED_BUCKETS[-1]
# (bucket, N, K, x dtype, bn, bk) -> FusedGemvConfig / BlockFp8GemmConfig, or None = the baseline
_choice: dict[tuple, object] = {}


def _bucket(m: int) -> int:
    return next(b for b in GEMV_BUCKETS + TILED_BUCKETS if b >= m)


def _candidates(rows: int, k: int, block: tuple[int, int]) -> list[object]:
    from pagedlm.kernels import triton_block_fp8, triton_gemv_fused as fused  # noqa: PLC0415

    if rows <= GEMV_BUCKETS[-1]:
        return [c for c in fused.quick_configs(rows, eight_bit=True)
                if fused.fits(rows, k, c) and fused.fits_block(c, block)]
    return list(triton_block_fp8.QUICK_CONFIGS)


def _run(config: object, x: torch.Tensor, w: torch.Tensor, block_scale: torch.Tensor, block: tuple[int, int],
         bias: torch.Tensor | None) -> torch.Tensor:
    from pagedlm.kernels import triton_block_fp8, triton_gemv_fused as fused  # noqa: PLC0415

    if isinstance(config, fused.FusedGemvConfig):
        return fused.fused_gemv(x, w, None, None, x.dtype, bias, config, block_scale, block)
    return triton_block_fp8.block_fp8_gemm(x, w, block_scale, block, bias, config)


def _config_types() -> tuple[type, ...]:
    from pagedlm.kernels import triton_block_fp8, triton_gemv_fused as fused  # noqa: PLC0415

    return fused.FusedGemvConfig, triton_block_fp8.BlockFp8GemmConfig


def block_fp8_linear(x: torch.Tensor, w: torch.Tensor, block_scale: torch.Tensor, block: tuple[int, int],
                     bias: torch.Tensor | None,
                     baseline: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """x [M, K] (16-bit) @ dequantized(w)^T (+ bias) through the GEMV or the tiled GEMM where
    one wins for this shape and agrees with ``baseline(x)`` (the layer's own product, without
    bias); None where the baseline runs."""
    m, k = x.shape
    if (not x.is_cuda or not 1 <= m <= MAX_TILED_M or x.element_size() != 2 or x.stride(1) != 1
            or w.stride(1) != 1 or block_scale.stride(1) != 1):
        return None
    key = (_bucket(m), w.shape[0], k, x.dtype, *block)
    if key not in _choice:
        if torch.cuda.is_current_stream_capturing():
            return None
        rows = key[0]
        x_t = x[:1].expand(rows, -1).contiguous() if rows != m else x

        def tune() -> object:
            best, best_ms, baseline_ms = fastest_agreeing(
                lambda: baseline(x_t), _candidates(rows, k, block),
                lambda c: _run(c, x_t, w, block_scale, block, None))
            logger.debug("block-wise fp8, M=%d N=%d K=%d block %s: %s (%.1f us; dequantize + GEMM %.1f us)", rows,
                         w.shape[0], k, block, best or "dequantize + GEMM", best_ms * 1e3, baseline_ms * 1e3)
            return best

        _choice[key] = tuning_cache.cached("block_fp8", key, x.device, _config_types(), tune)
    config = _choice[key]
    return None if config is None else _run(config, x, w, block_scale, block, bias)
