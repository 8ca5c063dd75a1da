"""Which kernel runs a block-wise fp8 layer (W8A16: fp8 codes, one scale per [bn, bk] block,
16-bit activations) on a GPU, decided per bucket of rows on first use (``bucket_tuner``):

- up to 8 rows: the one-launch GEMV (``triton_gemv_fused``) with each program's block row of
  scales folded into the activations;
- up to 1,024 rows: the tiled block-scaled GEMM (``triton_block_fp8``);
- each against the layer's own product (dequantize, then the dense GEMM), which stays wherever
  no candidate agrees with it and beats it, and for larger batches.
"""

from __future__ import annotations

from typing import Callable

import torch

from pagedlm.kernels.bucket_tuner import tuned_run

GEMV_BUCKETS = (1, 2, 4, 8)
BUCKETS = GEMV_BUCKETS + (16, 32, 64, 128, 256, 512, 1024)
# (bucket, N, K, x dtype, bn, bk) -> FusedGemvConfig / BlockFp8GemmConfig, or None = the baseline
_choice: dict[tuple, object] = {}


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


def block_fp8_linear(x: torch.Tensor, w: torch.Tensor, block_scale: torch.Tensor, block: tuple[int, int],
                     bias: torch.Tensor | None,
                     baseline: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """x [M, K] (16-bit) @ dequantized(w)^T (+ bias) through the GEMV or the tiled GEMM where
    one wins for this shape and agrees with ``baseline(x)`` (the layer's own product, without
    bias); None where the baseline runs."""
    from pagedlm.kernels import triton_block_fp8, triton_gemv_fused as fused  # noqa: PLC0415

    if x.element_size() != 2 or x.stride(1) != 1 or w.stride(1) != 1 or block_scale.stride(1) != 1:
        return None
    k = x.shape[1]
    return tuned_run(_choice, "block_fp8", (w.shape[0], k, x.dtype, *block), x, bias, BUCKETS,
                     lambda rows: _candidates(rows, k, block),
                     lambda c, a, b: _run(c, a, w, block_scale, block, b), baseline,
                     (fused.FusedGemvConfig, triton_block_fp8.BlockFp8GemmConfig))
