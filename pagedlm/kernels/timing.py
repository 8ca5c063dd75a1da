"""Timing a kernel candidate the way a decode step runs it, for the first-use tuners
(``gemv``, ``scaled_gemv``, ``wna16_tuning``).

A decode step replays CUDA graphs: no host launch cost between kernels, and each layer's
weight arrives from HBM (the other layers' weights passed through L2 since). An eager timing
of a short kernel mostly measures the host's launch instead (Triton's Python launch above
all), which picked slower kernels for the 8-bit layers (H200, 2026-11-29).
"""

from __future__ import annotations

from typing import Callable

import torch

_FLUSH_BYTES = 256 << 20  # more than any GPU's L2
_CALLS = 8  # calls per graph replay


def _graph_ms(body: Callable[[], object]) -> float:
    """Median device time of one replay of a CUDA graph of ``_CALLS`` calls of ``body``."""
    graph = torch.cuda.CUDAGraph()
    # thread_local: another thread's CUDA calls (an engine's output thread) stay legal meanwhile
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        for _ in range(_CALLS):
            body()
    return replay_ms(graph)


def graph_ms(fn: Callable[[], object], replays: int = 20) -> float:
    """Median device time of one replay of a CUDA graph of ``fn()`` (run once eagerly first:
    Triton compiles, ticket counters exist); for benchmarks that chain many launches in ``fn``."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return replay_ms(graph, replays)


def replay_ms(graph: torch.cuda.CUDAGraph, replays: int = 5) -> float:
    """Median device time of one replay of a captured graph (after one untimed replay)."""
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _flush(buf: torch.Tensor) -> None:
    """Evict L2 by writing ``buf``. Where the step's kernels launch with PDL the flush is one
    of them too, so a candidate that overlaps the kernel ahead (``pdl``) is timed as it runs
    in a step, and one that cannot (cuBLAS) is not credited with it."""
    from pagedlm.kernels import pdl  # noqa: PLC0415 - needs Triton

    pdl.zero_(buf.view(torch.int32))


def flush_buffer(device: torch.device) -> torch.Tensor:
    """A buffer larger than any GPU's L2, for ``_flush``."""
    return torch.empty(_FLUSH_BYTES, dtype=torch.int8, device=device)


def decode_time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Device time of one ``fn()`` the way a decode step runs it: replayed from a CUDA graph
    (an eager timing of a short kernel mostly measures the host's launch, Triton's above
    all), with L2 flushed before every call (a step's weights are not in L2; ``_flush``):
    graph(flush, fn) minus graph(flush).

    The flush buffer is made per call (the caching allocator serves the next one from the
    same block): kept in a module dict it held 256 MiB of the card for good once a tuner had
    run, after the KV cache was sized (a tuner runs at the first use of a shape, e.g. in the
    decode graphs' capture)."""
    buf = flush_buffer(device)
    both = _graph_ms(lambda: (_flush(buf), fn()))
    flush = _graph_ms(lambda: _flush(buf))
    return max(both - flush, 0.0) / _CALLS
