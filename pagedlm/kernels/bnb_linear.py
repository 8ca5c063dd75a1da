"""Which kernel runs a bitsandbytes 4-bit layer (NF4 / FP4 codes packed two to a byte, one
absmax per block of inputs, 16-bit activations) on a GPU, decided per bucket of rows on first
use (``bucket_tuner``) against the layer's dequantize + GEMM (``dequantize``: the weight
rebuilt in the activations' dtype by ``triton_nf4.nf4_dequantize``, then the dense GEMM):

- one row: the 4-bit GEMV (``triton_nf4.nf4_gemv``) or the tiled GEMM;
- up to 1,024 rows: the tiled 4-bit GEMM (``triton_nf4.nf4_gemm``);
- each where it beats the dequantize + GEMM for the shape and agrees with it; the dequantize +
  GEMM everywhere else and for larger batches.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from pagedlm.kernels.bucket_tuner import tuned_run

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# (bucket, N, K, x dtype, blocksize) -> Nf4GemvConfig / Nf4GemmConfig, or None = the baseline
_choice: dict[tuple, object] = {}


def dequantize(packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The layer's weight [N, K] in ``dtype`` on its GPU (one kernel: codes read once, the
    16-bit weight written once)."""
    from pagedlm.kernels import triton_nf4  # noqa: PLC0415

    return triton_nf4.nf4_dequantize(packed, absmax, table, dtype)


def _candidates(rows: int, k: int) -> list[object]:
    from pagedlm.kernels import triton_nf4  # noqa: PLC0415

    gemvs = [c for c in triton_nf4.GEMV_CONFIGS if triton_nf4.gemv_fits(rows, k, c)]
    return gemvs + list(triton_nf4.QUICK_CONFIGS)


def bnb_linear(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] (16-bit, on the GPU) @ W^T (+ bias), W = table[code] * absmax per block: the
    4-bit kernels where they win, else dequantize + GEMM. ``table``: the 16 code values,
    float32 (any stride)."""
    from pagedlm.kernels import triton_nf4  # noqa: PLC0415

    def baseline(a: torch.Tensor) -> torch.Tensor:
        return F.linear(a, dequantize(packed, absmax, table, a.dtype))

    k = x.shape[-1]
    blocks = absmax.shape[-1]
    blocksize = k // blocks
    y = None
    if (x.element_size() == 2 and x.stride(1) == 1 and packed.stride(1) == 1 and absmax.stride(1) == 1
            and blocksize * blocks == k and blocksize >= 32 and not blocksize & (blocksize - 1)):
        y = tuned_run(_choice, "bnb_4bit", (packed.shape[0], k, x.dtype, blocksize), x, bias, BUCKETS,
                      lambda rows: _candidates(rows, k), lambda c, a, b: _run(c, a, packed, absmax, table, b),
                      baseline, (triton_nf4.Nf4GemmConfig, triton_nf4.Nf4GemvConfig))
    return y if y is not None else F.linear(x, dequantize(packed, absmax, table, x.dtype), bias)


def _run(config: object, x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor,
         bias: torch.Tensor | None) -> torch.Tensor:
    from pagedlm.kernels import triton_nf4  # noqa: PLC0415

    if isinstance(config, triton_nf4.Nf4GemvConfig):
        return triton_nf4.nf4_gemv(x, packed, absmax, table, bias, config)
    return triton_nf4.nf4_gemm(x, packed, absmax, table, bias, config)
