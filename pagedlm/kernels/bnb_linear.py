"""Which kernel runs a bitsandbytes 4-bit layer (NF4 / FP4 codes packed two to a byte, one
absmax per block of inputs, 16-bit activations) on a GPU: the tiled 4-bit GEMM
(``triton_nf4``) for batches of up to 1,024 rows where one of its tiles beats the layer's
dequantize + GEMM for the shape and agrees with it, decided per bucket of rows on first use
(``bucket_tuner``); the dequantize + GEMM everywhere else.
"""

from __future__ import annotations

from typing import Callable

import torch

from pagedlm.kernels.bucket_tuner import tuned_run

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# (bucket, N, K, x dtype, blocksize) -> Nf4GemmConfig, or None = the baseline
_choice: dict[tuple, object] = {}


def bnb_linear(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor,
               bias: torch.Tensor | None, baseline: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor | None:
    """x [M, K] (16-bit) @ W^T (+ bias), W = table[code] * absmax per block, through the 4-bit
    GEMM where it wins; None where ``baseline(x)`` (the layer's own product, without bias) runs.
    ``table``: the 16 code values, float32 (any stride)."""
    from pagedlm.kernels import triton_nf4  # noqa: PLC0415

    k = x.shape[-1]
    blocks = absmax.shape[-1]
    blocksize = k // blocks
    if (x.element_size() != 2 or x.stride(1) != 1 or packed.stride(1) != 1 or absmax.stride(1) != 1
            or blocksize * blocks != k or blocksize < 32 or blocksize & (blocksize - 1)):
        return None
    return tuned_run(_choice, "bnb_4bit", (packed.shape[0], k, x.dtype, blocksize), x, bias, BUCKETS,
                     lambda rows: list(triton_nf4.QUICK_CONFIGS),
                     lambda c, a, b: triton_nf4.nf4_gemm(a, packed, absmax, table, b, c), baseline,
                     (triton_nf4.Nf4GemmConfig,))
