"""What the CUDA graphs take against the start-up's estimate of it
(``profile_run.graph_memory``): wrappers around the model runner's two methods, for
``benchmarks/gpu_memory_budget.py`` and the GPU tests. The engine core must run in this
process (``LLM``'s default)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from pagedlm.worker.model_runner import ModelRunner


@contextmanager
def watch_graph_capture() -> Iterator[dict]:
    """Yields a dict that the engines started inside the block fill: ``estimate`` (bytes the
    start-up set aside for the graphs), ``captured`` (free memory the real capture took) and
    ``used_fraction`` (of the card, right after the capture)."""
    seen = {"estimate": 0, "captured": 0, "used_fraction": 0.0}
    estimate, capture = ModelRunner._graph_memory, ModelRunner._capture_graphs

    def estimate_spy(runner: ModelRunner) -> int:
        seen["estimate"] = estimate(runner)
        return seen["estimate"]

    def capture_spy(runner: ModelRunner, largest_only: bool = False) -> None:
        if largest_only:  # the estimate's own capture
            return capture(runner, largest_only=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free = torch.cuda.mem_get_info()[0]
        capture(runner)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free_after, total = torch.cuda.mem_get_info()
        seen["captured"], seen["used_fraction"] = free - free_after, (total - free_after) / total

    ModelRunner._graph_memory, ModelRunner._capture_graphs = estimate_spy, capture_spy
    try:
        yield seen
    finally:
        ModelRunner._graph_memory, ModelRunner._capture_graphs = estimate, capture
