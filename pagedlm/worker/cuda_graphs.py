"""CUDA graphs for decode steps: one graph per batch size in a ladder; a step is padded
up to the next captured size. Graphs read their inputs from StepBuffers' fixed views."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

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


class CUDAGraphRunner:
    def __init__(self, model: nn.Module, buffers: StepBuffers, sizes: list[int], max_model_len: int) -> None:
        self.model = model
        self.buffers = buffers
        self.sizes = sorted(sizes)
        # Kernels size their grids by max_seq_len, so graphs are captured for the longest context.
        self.max_seq_len = max_model_len
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # The smaller graphs copy their outputs into the largest graph's, so the pool keeps one
        # output: one per graph would interleave with the freed scratch and split it, and the
        # graphs would take more than start-up measures by capturing the largest one alone
        # (profile_run.graph_memory).
        self.outputs: dict[int, torch.Tensor] = {}
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

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        out = None  # the largest graph's output, once captured
        for size in reversed(self.sizes):  # largest first, so smaller graphs reuse its pool
            self._dummy_step(size)
            input_ids, positions, meta = self.buffers.device_inputs(size, size, 1, self.max_seq_len, size)
            graph, self.outputs[size] = capture_forward(self.model, input_ids, positions, meta, self.pool, out)
            if self.pool is None:
                self.pool, out = graph.pool(), self.outputs[size]
            self.graphs[size] = graph
        torch.cuda.synchronize()
        logger.info("Captured %d CUDA graphs (batch sizes %d..%d) in %.1f s", len(self.graphs), self.sizes[0],
                    self.sizes[-1], time.perf_counter() - start)

    def replay(self, size: int, num_tokens: int) -> torch.Tensor:
        """Replay the graph of ``size`` over inputs already staged and uploaded into the
        buffers (one token per sequence, padded to ``size``): hidden [num_tokens, H]."""
        self.graphs[size].replay()
        return self.outputs[size][:num_tokens]
