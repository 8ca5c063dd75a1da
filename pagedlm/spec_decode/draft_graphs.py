"""CUDA graphs for a draft model: its chained drafting steps and its mirror of the target's
steps replay captured graphs instead of eager forwards (each eager forward of a 16-layer
draft is host-bound: far slower than its device time).

- Chain graphs, one per batch size on the decode ladder (capped like the verify graphs by
  ``disable_by_batch_size``): one token per sequence, the draft's forward and LM head. They
  read static buffers of their own: token ids, and one [3, S] block of positions, slots and
  sequence lengths. A proposal uploads every chain step's positions and slots (and the
  block tables) in one host-to-device copy; before step j one device copy moves row j into
  the static block and one moves the previous step's sampled tokens into the ids. Padded
  rows (batch below the size) write no KV (slot -1) and read one position of block 0; their
  logits are never read.
- Mirror graphs, one per target graph (decode and verify shapes): the draft's forward over
  the target's step buffers exactly as the target's graph of that shape reads them, so a
  step that replayed a target graph also replays the draft's. Other steps (prefill chunks,
  batches above the ladder) mirror eagerly.

Sampling the drafts stays eager (an argmax for greedy requests). The graphs share one
memory pool of their own (a chain step and a mirror never overlap; the target's pool holds
outputs of a step that may still be in flight).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from pagedlm.attention.metadata import AttentionMetadata
from pagedlm.forward_context import set_forward_context

if TYPE_CHECKING:
    from pagedlm.worker.model_runner import ModelRunner

logger = logging.getLogger(__name__)


class Replayable:
    """A captured graph and its static output; off CUDA (CPU tests) the same forward over
    the same static buffers, run eagerly at each replay. ``out``: a buffer of at least as
    many rows that the graph copies its output into (and whose view is its output)."""

    def __init__(self, forward: Callable[[], torch.Tensor], pool: tuple | None, on_cuda: bool,
                 out: torch.Tensor | None = None) -> None:
        self.forward = forward
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None
        if on_cuda:
            for _ in range(2):  # warm up: Triton compiles, cuBLAS picks its kernels
                forward()
            torch.cuda.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                result = forward()
                self.out = result if out is None else out[: result.shape[0]].copy_(result)

    def replay(self) -> torch.Tensor:
        if self.graph is None:
            return self.forward()
        self.graph.replay()
        return self.out


class DraftGraphs:
    def __init__(self, model: torch.nn.Module, runner: "ModelRunner", chain_sizes: list[int]) -> None:
        self.model = model
        self.runner = runner
        self.device = runner.device
        self.chain_sizes = chain_sizes
        self.max_seq_len = runner.config.model_config.max_model_len  # kernels' grid bound, as decode graphs
        self.width = runner.buffers.width
        size = max(chain_sizes, default=1)
        self.ids = torch.zeros(size, dtype=torch.int64, device=self.device)
        self.block = torch.zeros(3, size, dtype=torch.int64, device=self.device)  # positions, slots, seq lens
        self.block[1].fill_(-1)
        self.block[2].fill_(1)
        self.qsl = torch.arange(size + 1, dtype=torch.int64, device=self.device)
        self.tables = torch.zeros(size, self.width, dtype=torch.int64, device=self.device)
        self.staged = torch.zeros(0, dtype=torch.int64, device=self.device)  # [k, 3, S] of a proposal
        self.chain: dict[int, Replayable] = {}
        self.mirror: dict[tuple[str, int, int], Replayable] = {}  # (target graphs, size, tokens)
        self.pool = None
        # Each group's graphs (the chain's; the mirrors of the target's decode, of its verify
        # graphs) are captured largest first and copy their outputs into the first one's, as
        # the target's ladders do (cuda_graphs.capture_ladder): a chain graph's own [size, V]
        # logits each would hold gigabytes over the ladder with a 128k vocabulary.
        self._outputs: dict[str, torch.Tensor] = {}
        self.num_chain_replays = 0  # chain steps through this class (tests, benchmarks)
        self.num_mirror_replays = 0

    # ---- chain --------------------------------------------------------------------------
    def chain_size(self, num_seqs: int) -> int | None:
        return next((s for s in self.chain_sizes if s >= num_seqs), None)

    def _chain_meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(slot_mapping=self.block[1, :size], query_start_loc=self.qsl[: size + 1],
                                 seq_lens=self.block[2, :size], block_tables=self.tables[:size],
                                 max_query_len=1, max_seq_len=self.max_seq_len, num_actual_tokens=size)

    def _chain_forward(self, size: int) -> torch.Tensor:
        with set_forward_context(self._chain_meta(size)):
            return self.model.compute_logits(self.model(self.ids[:size], self.block[0, :size]))

    def stage(self, positions: np.ndarray, slots: np.ndarray, tables: np.ndarray, size: int) -> None:
        """A proposal's chain positions and slots [n, B] and block tables [B, W], padded to
        ``size`` rows, in one host-to-device copy."""
        n, batch = positions.shape
        host = np.zeros((n * 3 * size + size * self.width,), dtype=np.int64)
        steps = host[: n * 3 * size].reshape(n, 3, size)
        steps[:, 0, :batch] = positions
        steps[:, 1, :] = -1
        steps[:, 1, :batch] = slots
        steps[:, 2, :] = 1
        steps[:, 2, :batch] = positions + 1
        table = host[n * 3 * size :].reshape(size, self.width)
        table[:batch, : tables.shape[1]] = tables
        src = torch.from_numpy(host)
        if self.device.type == "cuda":
            src = src.pin_memory()
        dev = src.to(self.device, non_blocking=True)
        self.staged = dev[: n * 3 * size].view(n, 3, size)
        self.tables[:size].copy_(dev[n * 3 * size :].view(size, self.width))

    def chain_step(self, size: int, j: int, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [size, V] of chain step j (staged by stage()) fed ``tokens`` [B]."""
        self.block[:, :size].copy_(self.staged[j])
        self.ids[: len(tokens)].copy_(tokens)
        self.num_chain_replays += 1
        graph = self.chain.get(size)
        if graph is None:  # not captured (CPU tests): the same padded step, eagerly
            return self._chain_forward(size)
        return graph.replay()

    # ---- mirror -------------------------------------------------------------------------
    def _target_graphs(self) -> list[tuple[str, object]]:
        """The target's graph runners in the order the runner's _forward tries them."""
        pairs = (("decode", self.runner.graph_runner), ("verify", self.runner.verify_graphs))
        return [(name, g) for name, g in pairs if g is not None]

    def replay_mirror(self, num_seqs: int, max_query_len: int) -> bool:
        """The draft's graph for the target graph the step just replayed (chosen as the
        runner's _forward chooses it); False when the step ran eagerly."""
        for name, graphs in self._target_graphs():
            shape = graphs.shape_for(num_seqs, max_query_len)
            if shape is not None:  # (the token count tells verify graphs of another k apart)
                graph = self.mirror.get((name, shape.size, shape.num_tokens))
                if graph is None:
                    return False
                graph.replay()
                self.num_mirror_replays += 1
                return True
        return False

    def recapture_verify_mirrors(self) -> None:
        """(benchmarks) after the target's verify graphs were captured again for another k."""
        self.mirror = {key: g for key, g in self.mirror.items() if key[0] != "verify"}
        self._outputs.pop("verify", None)
        if self.runner.verify_graphs is not None:
            with torch.inference_mode():
                for size in reversed(self.runner.verify_graphs.sizes):
                    self._capture_mirror("verify", self.runner.verify_graphs, size)

    # ---- capture ------------------------------------------------------------------------
    def _capture(self, forward: Callable[[], torch.Tensor], group: str) -> Replayable:
        graph = Replayable(forward, self.pool, self.device.type == "cuda", self._outputs.get(group))
        if graph.graph is not None:
            self.pool = graph.graph.pool() if self.pool is None else self.pool
            self._outputs.setdefault(group, graph.out)
        return graph

    @torch.inference_mode()
    def capture(self) -> None:
        """After the target's graphs (the mirror graphs follow their shapes). Off CUDA the
        graphs are eager stand-ins over the same buffers (CPU tests of this path)."""
        start = time.perf_counter()
        for size in reversed(self.chain_sizes):  # largest first, so smaller graphs reuse its memory
            self.chain[size] = self._capture(lambda size=size: self._chain_forward(size), "chain")
        for name, graphs in self._target_graphs():
            for size in reversed(graphs.sizes):
                self._capture_mirror(name, graphs, size)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        logger.info("Captured %d draft-model chain and %d mirror CUDA graphs in %.1f s", len(self.chain),
                    len(self.mirror), time.perf_counter() - start)

    def _capture_mirror(self, name: str, graphs, size: int) -> None:
        """On the target's buffers staged with an all-padding step of the target graph's
        shape (no KV written), reading the views that graph reads."""
        if name == "decode":
            shape, max_query_len = graphs.shape_for(size, 1), 1
            graphs._dummy_step(size)
        else:
            shape, max_query_len = graphs._shape(size), graphs.query_len
            graphs._dummy_step(shape)
        input_ids, positions, meta = self.runner.buffers.device_inputs(
            shape.num_tokens, shape.num_seqs, max_query_len, self.max_seq_len, shape.num_tokens)

        def forward() -> torch.Tensor:
            with set_forward_context(meta):
                return self.model(input_ids, positions)

        self.mirror[(name, size, shape.num_tokens)] = self._capture(forward, name)
