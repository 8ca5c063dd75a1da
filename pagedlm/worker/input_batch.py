"""The runner's copy of each request, and the step inputs built from a SchedulerOutput."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from pagedlm.engine.messages import NewRequestData
from pagedlm.pooling_params import PoolingParams
from pagedlm.sampling_params import SamplingParams


@dataclass
class CachedRequestState:
    req_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    sampling_params: SamplingParams
    generator: torch.Generator | None
    block_ids: list[int]
    num_computed_tokens: int
    token_ids: list[int] = field(default_factory=list)  # prompt + output, grows as the runner samples
    # 1 while this request's last sampled token is still on the device (async scheduling):
    # the next step reads that input token there.
    num_pending: int = 0
    # Its sampling reads the tokens generated so far (penalties, bad words, min_tokens), so
    # they must all be on the host before its next step is sampled.
    needs_history: bool = False
    pooling_params: PoolingParams | None = None  # pooling requests: pooled, not sampled, when computed
    spec_token_ids: list[int] = field(default_factory=list)  # this step's drafts (speculative decoding)
    prompt_embeds: torch.Tensor | None = None  # [num_prompt_tokens, hidden] on the device: a prompt given as embeddings

    @classmethod
    def from_new(cls, data: NewRequestData, device: torch.device,
                 generator: torch.Generator | None = None) -> "CachedRequestState":
        """``generator``: a preempted request's, resumed where it stopped (else a seeded one is new)."""
        if generator is None and data.sampling_params.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(data.sampling_params.seed)
        state = cls(data.req_id, list(data.prompt_token_ids), list(data.output_token_ids), data.sampling_params,
                    generator, list(data.block_ids), data.num_computed_tokens)
        state.token_ids = state.prompt_token_ids + state.output_token_ids
        state.pooling_params = data.pooling_params
        if data.prompt_embeds is not None:
            from pagedlm.engine.prompt_embeds import from_wire

            state.prompt_embeds = from_wire(data.prompt_embeds, device)
        p = data.sampling_params
        # Penalties are not here: they read the persistent batch's on-device token counts.
        state.needs_history = bool(p.bad_words_token_ids or p.min_tokens)
        return state

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


@dataclass
class StepInputs:
    """Host-side arrays for one step (copied to the device once)."""

    req_ids: list[str]
    input_ids: np.ndarray  # [T] int64
    positions: np.ndarray  # [T] int64
    slot_mapping: np.ndarray  # [T] int64
    query_start_loc: np.ndarray  # [B + 1] int32
    seq_lens: np.ndarray  # [B] int32
    block_tables: np.ndarray  # [B, max_blocks] int32
    sample_rows: list[int]  # indices into req_ids of requests that sample a token this step
    logits_indices: np.ndarray  # [len(sample_rows)] token index of each sampling request's last token
    prompt_logprob_spans: dict[int, tuple[int, int, int]]  # row -> (first token index, count, first target position)
    # Input tokens not known on the host yet (the previous step's samples): token index in
    # this step -> request id whose last sample fills it.
    pending_token_indices: list[int] = field(default_factory=list)
    pending_req_ids: list[str] = field(default_factory=list)
    num_computed: np.ndarray | None = None  # [B] int64 tokens in the KV cache before this step
    # positions / slot_mapping / block_tables are empty when the device prepares them
    # (pagedlm.kernels.step_prep) from the persistent batch.
    host_slots: bool = True


def _padded_block_tables(block_lists: list[list[int]]) -> np.ndarray:
    """[B, max_blocks] int32, rows zero-padded; one fill instead of a row-by-row copy."""
    lens = np.fromiter(map(len, block_lists), dtype=np.int64, count=len(block_lists))
    width = int(lens.max())
    tables = np.zeros((len(block_lists), width), dtype=np.int32)
    tables[np.arange(width) < lens[:, None]] = np.fromiter(
        itertools.chain.from_iterable(block_lists), dtype=np.int32, count=int(lens.sum()))
    return tables


def build_step_inputs(
    states: dict[str, CachedRequestState], num_scheduled: dict[str, int], block_size: int,
    block_tables: np.ndarray | None = None, host_slots: bool = True,
) -> StepInputs:
    """``block_tables``: the rows' tables from the persistent batch (rebuilt from the
    requests' block lists when None)."""
    req_ids = list(num_scheduled)
    reqs = [states[r] for r in req_ids]
    counts = np.fromiter(num_scheduled.values(), dtype=np.int64, count=len(req_ids))
    starts = np.fromiter((s.num_computed_tokens for s in reqs), dtype=np.int64, count=len(req_ids))
    query_start_loc = np.zeros(len(req_ids) + 1, dtype=np.int32)
    np.cumsum(counts, out=query_start_loc[1:])
    seq_lens = (starts + counts).astype(np.int32)
    total = int(query_start_loc[-1])
    # positions of every token: start of its request + offset inside the request's chunk
    token_req = np.repeat(np.arange(len(req_ids)), counts)
    positions = starts[token_req] + (np.arange(total) - query_start_loc[:-1][token_req])
    if not host_slots:
        block_tables = np.zeros((len(req_ids), 0), dtype=np.int32)
    elif block_tables is None:
        block_tables = _padded_block_tables([s.block_ids for s in reqs])
    input_ids = np.fromiter(
        itertools.chain.from_iterable(
            s.token_ids[lo : lo + n] for s, lo, n in zip(reqs, starts.tolist(), counts.tolist())),
        dtype=np.int64, count=total - sum(s.num_pending for s in reqs))
    sample_rows, logits_indices, spans = [], [], {}
    pending_idx, pending_reqs = [], []
    for i, (state, hi) in enumerate(zip(reqs, seq_lens.tolist())):
        if state.num_pending:
            # Its last input token is the previous step's sample, still on the device.
            pending_idx.append(int(query_start_loc[i + 1]) - 1)
            pending_reqs.append(state.req_id)
        if hi == len(state.token_ids) + state.num_pending:
            sample_rows.append(i)
            logits_indices.append(int(query_start_loc[i + 1]) - 1)
        if state.sampling_params.prompt_logprobs is not None and hi - counts[i] < state.num_prompt_tokens - 1:
            # logits at position p score prompt token p + 1
            lo = int(hi - counts[i])
            spans[i] = (int(query_start_loc[i]), min(hi, state.num_prompt_tokens - 1) - lo, lo + 1)
    if pending_idx:  # placeholders (0) where the device fills in the pending tokens
        known = np.ones(total, dtype=bool)
        known[pending_idx] = False
        full = np.zeros(total, dtype=np.int64)
        full[known] = input_ids
        input_ids = full
    if host_slots:
        block_ids = block_tables[token_req, positions // block_size]
        slot_mapping = block_ids.astype(np.int64) * block_size + positions % block_size
    else:
        positions = slot_mapping = np.zeros(0, dtype=np.int64)
    return StepInputs(req_ids, input_ids, positions, slot_mapping, query_start_loc, seq_lens, block_tables,
                      sample_rows, np.array(logits_indices, dtype=np.int64), spans, pending_idx, pending_reqs,
                      starts, host_slots)
