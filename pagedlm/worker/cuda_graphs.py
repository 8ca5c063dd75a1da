"""CUDA graphs for decode steps: one graph per batch size in a ladder; a step is padded
up to the next captured size. Graphs read their inputs from StepBuffers' fixed views."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from pagedlm.compilation import MAX_CAPTURE_SIZE, default_capture_sizes
from pagedlm.forward_context import set_forward_context
from pagedlm.worker.input_batch import StepInputs
from pagedlm.worker.step_buffers import StepBuffers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphShape:
    """The padded shape a step replays a graph under: ``size`` is the graph's batch size;
    the step's tokens and sequences are padded to ``num_tokens`` and ``num_seqs``, the
    padded sequences taking ``pad_query_len`` tokens each (StepBuffers.stage)."""

    size: int
    num_tokens: int
    num_seqs: int
    pad_query_len: int = 1


def capture_sizes(max_num_seqs: int) -> list[int]:
    """The default decode batch sizes captured as graphs (vLLM's list, continued to MAX_CAPTURE_SIZE)."""
    return default_capture_sizes(min(max_num_seqs, MAX_CAPTURE_SIZE))


def capture_forward(model: nn.Module, input_ids: torch.Tensor, positions: torch.Tensor, meta,
                    pool, out: torch.Tensor | None = None) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Two warm-up forwards (Triton compiles, cuBLAS picks its kernels), then one forward
    captured into a new graph in ``pool``: (graph, its output tensor). ``out``: a buffer of at
    least as many rows that the graph copies its output into (and returns a view of)."""
    with set_forward_context(meta):
        for _ in range(2):
            model(input_ids, positions)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            output = model(input_ids, positions)
            if out is not None:
                output = out[: output.shape[0]].copy_(output)
    return graph, output


def capture_ladder(model: nn.Module, sizes: list[int], inputs_for: Callable[[int], tuple], pool
                   ) -> tuple[dict[int, torch.cuda.CUDAGraph], dict[int, torch.Tensor], tuple]:
    """One graph per size, largest first, all in ``pool`` (a new one when None): (graphs,
    outputs, pool). ``inputs_for(size)`` stages a dummy step of that size and returns the
    (input_ids, positions, metadata) the graph reads. The smaller graphs reuse the largest
    one's freed scratch and copy their outputs into its output, so the pool keeps one output
    per ladder: one per graph would hold the sum of all sizes' rows and split the freed
    scratch, and the ladder would take more than start-up measures by capturing its largest
    graph alone (profile_run.graph_memory)."""
    graphs: dict[int, torch.cuda.CUDAGraph] = {}
    outputs: dict[int, torch.Tensor] = {}
    out = None  # the largest graph's output, once captured
    for size in sorted(sizes, reverse=True):
        input_ids, positions, meta = inputs_for(size)
        graphs[size], outputs[size] = capture_forward(model, input_ids, positions, meta, pool, out)
        if pool is None:
            pool = graphs[size].pool()
        if out is None:
            out = outputs[size]
    return graphs, outputs, pool


class CUDAGraphRunner:
    def __init__(self, model: nn.Module, buffers: StepBuffers, sizes: list[int], max_model_len: int) -> None:
        self.model = model
        self.buffers = buffers
        self.sizes = sorted(sizes)
        # Kernels size their grids by max_seq_len, so graphs are captured for the longest context.
        self.max_seq_len = max_model_len
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # views of one buffer (capture_ladder)
        self.pool = None

    def padded_size(self, num_seqs: int) -> int | None:
        for size in self.sizes:
            if size >= num_seqs:
                return size
        return None

    def shape_for(self, num_seqs: int, max_query_len: int) -> GraphShape | None:
        """Decode-only steps (one query token per sequence) that fit a captured size."""
        size = self.padded_size(num_seqs) if max_query_len == 1 else None
        return None if size is None else GraphShape(size, size, size)

    def _dummy_step(self, size: int) -> None:
        empty = StepInputs([], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros((0, 1), np.int32), [],
                           np.zeros(0, np.int64), {})
        self.buffers.stage(empty, size, size)
        self.buffers.upload(size)

    def _dummy_inputs(self, size: int) -> tuple:
        self._dummy_step(size)
        return self.buffers.device_inputs(size, size, 1, self.max_seq_len, size)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        self.graphs, self.outputs, self.pool = capture_ladder(self.model, self.sizes, self._dummy_inputs, self.pool)
        torch.cuda.synchronize()
        logger.info("Captured %d CUDA graphs (batch sizes %d..%d) in %.1f s", len(self.graphs), self.sizes[0],
                    self.sizes[-1], time.perf_counter() - start)

    def replay(self, size: int, num_tokens: int) -> torch.Tensor:
        """Replay the graph of ``size`` over inputs already staged and uploaded into the
        buffers (one token per sequence, padded to ``size``): hidden [num_tokens, H]."""
        self.graphs[size].replay()
        return self.outputs[size][:num_tokens]
