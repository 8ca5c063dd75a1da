"""The first-use choice of a kernel per bucket of rows, for the layers whose fallback is to
dequantize their weight and run the dense GEMM (block-wise fp8, bitsandbytes 4-bit).

``tuned_run`` decides once per (bucket, layer shape): the candidates are timed the way a
decode step runs them (``timing.decode_time_ms``) at the bucket's largest row count, against
the layer's own product (``baseline``), and the fastest that agrees with it wins, else the
baseline. Decisions happen outside CUDA-graph capture (the runner's warm-up runs every decode
batch size before capture; during capture an undecided shape takes the baseline) and are kept
on disk for later starts (``tuning_cache``). Rows past the last bucket take the baseline
(compute-bound GEMMs, where the dequantized copy costs little against the product).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from pagedlm.kernels import tuning_cache
from pagedlm.kernels.gemv import fastest_agreeing

logger = logging.getLogger(__name__)


def tuned_run(choices: dict[tuple, object], tuner: str, shape_key: tuple, x: torch.Tensor, bias: torch.Tensor | None,
              buckets: Sequence[int], candidates: Callable[[int], list[object]],
              run: Callable[[object, torch.Tensor, torch.Tensor | None], torch.Tensor],
              baseline: Callable[[torch.Tensor], torch.Tensor], config_types: tuple[type, ...]) -> torch.Tensor | None:
    """``run(config, x, bias)`` with the config chosen for x's bucket of rows, or None where the
    baseline runs (``baseline(x)``: the product without bias). ``choices`` caches the decisions
    in memory, keyed (bucket, *shape_key)."""
    m = x.shape[0]
    if not x.is_cuda or not 1 <= m <= buckets[-1]:
        return None
    bucket = next(b for b in buckets if b >= m)
    key = (bucket, *shape_key)
    if key not in choices:
        if torch.cuda.is_current_stream_capturing():
            return None
        x_t = x[:1].expand(bucket, -1).contiguous() if bucket != m else x

        def tune() -> object:
            best, best_ms, baseline_ms = fastest_agreeing(lambda: baseline(x_t), candidates(bucket),
                                                          lambda c: run(c, x_t, None))
            logger.debug("%s, M=%d %s: %s (%.1f us; dequantize + GEMM %.1f us)", tuner, bucket, shape_key,
                         best or "dequantize + GEMM", best_ms * 1e3, baseline_ms * 1e3)
            return best

        choices[key] = tuning_cache.cached(tuner, key, x.device, config_types, tune)
    config = choices[key]
    return None if config is None else run(config, x, bias)
