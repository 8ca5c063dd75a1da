"""Draft-model proposer: a smaller checkpoint with the target's vocabulary drafts k tokens by
chained single-token steps.

Its KV cache is its own tensors indexed by the target's block ids (one block table for both).
Every target step is mirrored into it (same tokens, positions and slots), so the draft's
cache is valid exactly where the target's is, prefix-cache hits and rollbacks included.
Drafting then starts from each request's newest token and writes k scratch slots past it
(the scheduler's lookahead); the next step rewrites them with the verified tokens.
On a GPU both the chain and the mirror replay CUDA graphs (draft_graphs.py).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
import torch

from pagedlm.attention.metadata import AttentionMetadata
from pagedlm.config import ConfigError, load_hf_config
from pagedlm.forward_context import set_forward_context
from pagedlm.sampling_params import SAMPLING_EPS
from pagedlm.spec_decode.config import SpeculativeConfig
from pagedlm.worker import memory

if TYPE_CHECKING:
    from pagedlm.spec_decode.draft_graphs import DraftGraphs
    from pagedlm.worker.input_batch import CachedRequestState, StepInputs
    from pagedlm.worker.model_runner import ModelRunner



def sample_draft(logits: torch.Tensor, states: list["CachedRequestState"],
                 temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Draft tokens [B] and, when any row samples, their distributions q [B, V] (the
    request's temperature; seeded rows draw from the request's generator). Greedy rows
    take the argmax (greedy verification never reads q)."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1)
    random_rows = [i for i, s in enumerate(states) if s.sampling_params.temperature >= SAMPLING_EPS]
    if not random_rows:
        return greedy, None
    probs = (logits / temperature.clamp(min=SAMPLING_EPS).unsqueeze(1)).softmax(dim=-1)  # [B, V]
    exp = torch.empty_like(probs)
    torch.rand(exp.shape, out=exp).log_().neg_()
    for i in random_rows:
        if states[i].generator is not None:
            exp[i].exponential_(generator=states[i].generator)
    sampled = (probs / exp).argmax(dim=-1)
    return torch.where(temperature < SAMPLING_EPS, greedy, sampled), probs


def kv_cache_bytes(attention_layers: list, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of one KV block over a proposer's own attention layers."""
    size = torch.empty((), dtype=dtype).element_size()
    return sum(2 * block_size * a.num_kv_heads * a.head_dim * size for a in attention_layers)


def make_kv_caches(attention_layers: list, num_blocks: int, block_size: int, dtype: torch.dtype,
                   device: torch.device) -> None:
    """A proposer's own KV cache, indexed by the target's block ids."""
    for attn in attention_layers:
        attn.kv_cache = memory.zeroed_kv_cache((2, num_blocks, block_size, attn.num_kv_heads, attn.head_dim), dtype, device)


def collect_drafts(drafted: list[torch.Tensor], probs: list[torch.Tensor | None],
                   num_drafts: np.ndarray) -> tuple[list[list[int]], list[torch.Tensor | None]]:
    """Chain steps' drafts [B] each -> per request its drafts (one device-to-host copy) and
    draft distributions [n, V] (None when every row was greedy)."""
    batch = len(num_drafts)
    if not drafted:
        return [[] for _ in range(batch)], [None] * batch
    ids = torch.stack(drafted, dim=1).tolist()  # [B, k]: the drafts' one device-to-host copy
    out_probs: list[torch.Tensor | None] = [None] * batch
    if any(q is not None for q in probs):
        stacked = torch.stack([q if q is not None else torch.zeros_like(next(p for p in probs if p is not None))
                               for q in probs], dim=1)
        out_probs = [stacked[b, : num_drafts[b]] for b in range(batch)]
    return [row[: num_drafts[b]] for b, row in enumerate(ids)], out_probs


class ChainDrafter:
    """k chained single-token steps of a draft network over the batch, one upload of all
    positions and slots, one download of all drafts. Subclasses say how one step runs."""

    # Chain step j runs at (newest token's position + j + position_offset): a draft model
    # feeds the newest token at its own position; EAGLE's first draft comes from its pass
    # over the step (first_logits) and step j feeds draft j one position earlier.
    position_offset = 0

    def __init__(self, config: SpeculativeConfig, runner: "ModelRunner") -> None:
        self.k = config.num_speculative_tokens
        self.num_lookahead_tokens = self.k
        self.runner = runner
        self.device = runner.device
        self.block_size = runner.block_size

    def _plan(self, states: list["CachedRequestState"]) -> tuple[np.ndarray, ...]:
        """Per chain step j and request b: position, slot (-1 past the request's room) and
        context length; plus each request's draft count."""
        max_len = self.runner.config.model_config.max_model_len
        start = np.array([len(s.token_ids) - 1 for s in states], dtype=np.int64)  # newest token's position
        num_drafts = np.minimum(self.k, max_len - start - 1).clip(min=0)  # the bonus slot stays in range
        width = max(len(s.block_ids) for s in states)
        tables = np.zeros((len(states), width), dtype=np.int64)
        for b, s in enumerate(states):
            tables[b, : len(s.block_ids)] = s.block_ids
        steps = np.arange(self.k)[:, None]  # [k, 1]
        live = steps < num_drafts[None, :]  # [k, B]
        positions = np.where(live, start[None, :] + steps + self.position_offset, start[None, :])
        blocks = tables[np.arange(len(states))[None, :], positions // self.block_size]
        slots = np.where(live, blocks * self.block_size + positions % self.block_size, -1)
        return positions, slots, tables, num_drafts

    def propose(self, states: list["CachedRequestState"]) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        if not states:
            return [], []
        positions, slots, tables, num_drafts = self._plan(states)
        dev = self.device
        pos_d = torch.from_numpy(positions).to(dev)
        slot_d = torch.from_numpy(slots).to(dev)
        tables_d = torch.from_numpy(tables.astype(np.int32)).to(dev)
        qsl = torch.arange(len(states) + 1, dtype=torch.int32, device=dev)
        temperature = torch.tensor([s.sampling_params.temperature for s in states], dtype=torch.float32).to(dev)
        tokens = torch.tensor([s.token_ids[-1] for s in states], dtype=torch.int64).to(dev)
        first = self.first_logits(states)
        drafted, probs = [], []
        for j in range(int(num_drafts.max(initial=0))):
            if j == 0 and first is not None:
                logits = first
            else:
                meta = AttentionMetadata(slot_mapping=slot_d[j], query_start_loc=qsl,
                                         seq_lens=(pos_d[j] + 1).to(torch.int32), block_tables=tables_d,
                                         max_query_len=1, max_seq_len=int(positions[j].max()) + 1,
                                         num_actual_tokens=len(states))
                with set_forward_context(meta):
                    logits = self.chain_step(j, tokens, pos_d[j])  # [B, V]
            tokens, q = sample_draft(logits, states, temperature)
            drafted.append(tokens)
            probs.append(q)
        return collect_drafts(drafted, probs, num_drafts)

    def first_logits(self, states: list["CachedRequestState"]) -> torch.Tensor | None:
        return None

    def chain_step(self, j: int, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DraftModelProposer(ChainDrafter):
    def __init__(self, config: SpeculativeConfig, runner: "ModelRunner") -> None:
        super().__init__(config, runner)
        from pagedlm.models.loader import load_model

        target = runner.config.model_config
        hf_config = load_hf_config(config.model, target.trust_remote_code)
        if hf_config.vocab_size != target.vocab_size:
            raise ConfigError(f"speculative_config: the draft model's vocabulary ({hf_config.vocab_size}) differs from "
                              f"the target's ({target.vocab_size}); a draft must share the target's tokenizer")
        self.model_config = dataclasses.replace(target, model=config.model, hf_config=hf_config, runner="generate",
                                                pooler_config=None)
        self.model = load_model(self.model_config, self.device.type)
        self.graphs: DraftGraphs | None = None  # CUDA graphs of its chain steps and mirrors (draft_graphs.py)

    def use_graphs(self, chain_sizes: list[int], capture: bool = True) -> None:
        """Draft through graphs (after the target's graphs exist). ``capture=False``: the
        same padded, staged chain steps, run eagerly (CPU tests; mirrors stay eager)."""
        from pagedlm.spec_decode.draft_graphs import DraftGraphs

        if not getattr(self.model, "supports_cuda_graphs", True):  # the transformers backend: eager only
            return
        self.graphs = DraftGraphs(self.model, self.runner, chain_sizes)
        if capture:
            self.graphs.capture()

    def propose(self, states: list["CachedRequestState"]) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        size = self.graphs.chain_size(len(states)) if self.graphs is not None and states else None
        if size is None:
            return super().propose(states)
        positions, slots, tables, num_drafts = self._plan(states)
        n = int(num_drafts.max(initial=0))
        if n == 0:
            return collect_drafts([], [], num_drafts)
        self.graphs.stage(positions[:n], slots[:n], tables, size)
        temperature = torch.tensor([s.sampling_params.temperature for s in states], dtype=torch.float32).to(self.device)
        tokens = torch.tensor([s.token_ids[-1] for s in states], dtype=torch.int64).to(self.device)
        drafted, probs = [], []
        for j in range(n):
            logits = self.graphs.chain_step(size, j, tokens)[: len(states)]
            tokens, q = sample_draft(logits, states, temperature)
            drafted.append(tokens)
            probs.append(q)
        return collect_drafts(drafted, probs, num_drafts)

    def kv_bytes_per_block(self) -> int:
        return kv_cache_bytes(self.model.attention_layers(), self.block_size, self.model_config.torch_dtype)

    def initialize_kv_cache(self, num_blocks: int) -> None:
        make_kv_caches(self.model.attention_layers(), num_blocks, self.block_size, self.model_config.torch_dtype,
                       self.device)

    def after_target_forward(self, inputs: "StepInputs", hidden: torch.Tensor | None) -> None:
        """The step's tokens through the draft too (same device buffers, same metadata)."""
        num_tokens, num_seqs = len(inputs.input_ids), len(inputs.seq_lens)
        max_query_len = int(np.diff(inputs.query_start_loc).max())
        if self.graphs is not None and self.graphs.replay_mirror(num_seqs, max_query_len):
            return  # the target's step replayed a graph: so does its mirror
        input_ids, positions, meta = self.runner.buffers.device_inputs(
            num_tokens, num_seqs, max_query_len, int(inputs.seq_lens.max()), num_tokens)
        with set_forward_context(meta):
            self.model(input_ids, positions)

    def chain_step(self, j: int, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model.compute_logits(self.model(tokens, positions))
