"""CUDA graphs for verify steps: a step whose sequences each run at most
``query_len = 1 + num_speculative_tokens`` query tokens (decodes with their drafts) replays
one captured target forward per batch size, on the same ladder as the decode graphs.

Shape of the graph of batch size ``s`` (fixed at capture, since the attention kernel sizes
its launch grid and picks its tiles from the token count, the sequence count and
max_query_len):

- ``s * query_len`` tokens. The step's real tokens come first, packed exactly as an eager
  step packs them (so hidden-state row indices, the logits gather and a draft model's mirror
  of the step are unchanged); the rest are padding.
- ``2 * s`` sequence slots: the real ones first, with their real query lengths, then padding
  sequences of ``query_len`` tokens each that take the padding tokens (StepBuffers.stage),
  then empty ones. ``s`` real sequences plus ``s`` padding ones always cover ``s * query_len``
  tokens, whatever number of drafts each request carries.
- padding tokens write no KV (slot -1), attend only to their own few positions, and their
  hidden states are never read.

Why pad rather than run a short-drafted batch eagerly: n-gram proposals miss often and the
budget cuts drafts, so a uniform-only rule would leave many steps on the eager path (the
host-bound one this exists to avoid); padding costs a few wasted tokens of a memory-bound
step. Steps with a sequence longer than ``query_len`` (prefill chunks) run eagerly; a short
prefill chunk that fits is computed exactly like any other sequence.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from torch import nn

from pagedlm.forward_context import set_forward_context
from pagedlm.worker.cuda_graphs import GraphShape, capture_ladder
from pagedlm.worker.input_batch import StepInputs
from pagedlm.worker.step_buffers import StepBuffers

logger = logging.getLogger(__name__)


def verify_sizes(decode_sizes: list[int], query_len: int, max_buffer_seqs: int, max_buffer_tokens: int,
                 disable_by_batch_size: int | None) -> list[int]:
    """The decode ladder's sizes (``decode_sizes``, the decode graphs') that a verify graph can
    take: 2 x size sequence slots and size x query_len tokens must fit the step buffers; with
    ``disable_by_batch_size`` no step of that many requests speculates, so sizes past the one
    that holds ``disable_by_batch_size - 1`` requests would never replay."""
    sizes = [s for s in decode_sizes if 2 * s <= max_buffer_seqs and s * query_len <= max_buffer_tokens]
    if disable_by_batch_size is not None:
        top = next((s for s in sizes if s >= disable_by_batch_size - 1), None)
        sizes = [s for s in sizes if top is None or s <= top]
    return sizes


class VerifyGraphRunner:
    """Verify-step graphs; ``shape_for`` says whether (and how padded) a step replays one."""

    def __init__(self, model: nn.Module, buffers: StepBuffers, sizes: list[int], query_len: int,
                 max_model_len: int, pool: tuple | None = None) -> None:
        self.model = model
        self.buffers = buffers
        self.sizes = sizes
        self.query_len = query_len
        # Only the decode launch (max_query_len == 1, never a verify graph) sizes its grid by
        # max_seq_len; the longest context keeps the captured metadata a valid bound anyway.
        self.max_seq_len = max_model_len
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}  # views of one buffer (capture_ladder)
        self.pool = pool  # shared with the decode graphs: one step replays one graph at a time
        self.num_replays = 0  # verify steps that went through this runner (tests, benchmarks)
        self.num_padded_replays = 0  # ... with padding tokens (fewer requests than the size, or fewer than k drafts)

    def shape_for(self, num_seqs: int, max_query_len: int) -> GraphShape | None:
        """Steps whose longest query is 2..query_len tokens and whose requests fit a size (one
        token per sequence is a decode step: the decode graphs take it)."""
        if not 1 < max_query_len <= self.query_len:
            return None
        size = next((s for s in self.sizes if s >= num_seqs), None)
        return None if size is None else self._shape(size)

    def _shape(self, size: int) -> GraphShape:
        return GraphShape(size, size * self.query_len, 2 * size, self.query_len)

    def _metadata(self, shape: GraphShape):
        """The fixed device views a graph of this shape reads (its input ids, positions and
        attention metadata), bounded by the captured max_query_len and max_seq_len."""
        return self.buffers.device_inputs(shape.num_tokens, shape.num_seqs, self.query_len, self.max_seq_len,
                                          shape.num_tokens)

    def _dummy_step(self, shape: GraphShape) -> None:
        """All-padding inputs for capture: every sequence a padding one, no KV written."""
        empty = StepInputs([], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           np.zeros(1, np.int32), np.zeros(0, np.int32), np.zeros((0, 1), np.int32), [],
                           np.zeros(0, np.int64), {})
        self.buffers.stage(empty, shape.num_tokens, shape.num_seqs, shape.pad_query_len)
        self.buffers.upload(shape.num_seqs)

    def _dummy_inputs(self, size: int) -> tuple:
        shape = self._shape(size)
        self._dummy_step(shape)
        return self._metadata(shape)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        self.graphs, self.outputs, self.pool = capture_ladder(self.model, self.sizes, self._dummy_inputs, self.pool)
        torch.cuda.synchronize()
        if self.sizes:
            logger.info("Captured %d verify CUDA graphs (%d query tokens per request, batch sizes %d..%d) in %.1f s",
                        len(self.graphs), self.query_len, self.sizes[0], self.sizes[-1], time.perf_counter() - start)

    def replay(self, size: int, num_tokens: int) -> torch.Tensor:
        """Hidden states [num_tokens, H] of a step staged, uploaded and prepared into the
        buffers under ``shape_for``'s shape. A size without a captured graph (no CUDA: the
        CPU tests of the padding) runs the same padded forward eagerly."""
        self.num_replays += 1
        self.num_padded_replays += num_tokens < size * self.query_len
        graph = self.graphs.get(size)
        if graph is not None:
            graph.replay()
            return self.outputs[size][:num_tokens]
        input_ids, positions, meta = self._metadata(self._shape(size))
        with set_forward_context(meta):
            return self.model(input_ids, positions)[:num_tokens]
