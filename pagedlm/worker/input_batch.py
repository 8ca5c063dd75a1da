"""The runner's copy of each request, and the step inputs built from a SchedulerOutput."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pagedlm.engine.messages import NewRequestData
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

    @classmethod
    def from_new(cls, data: NewRequestData, device: torch.device) -> "CachedRequestState":
        generator = None
        if data.sampling_params.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(data.sampling_params.seed)
        state = cls(data.req_id, list(data.prompt_token_ids), list(data.output_token_ids), data.sampling_params,
                    generator, list(data.block_ids), data.num_computed_tokens)
        state.token_ids = state.prompt_token_ids + state.output_token_ids
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


def build_step_inputs(
    states: dict[str, CachedRequestState], num_scheduled: dict[str, int], block_size: int
) -> StepInputs:
    req_ids = list(num_scheduled)
    counts = np.array([num_scheduled[r] for r in req_ids], dtype=np.int64)
    starts = np.array([states[r].num_computed_tokens for r in req_ids], dtype=np.int64)
    query_start_loc = np.zeros(len(req_ids) + 1, dtype=np.int32)
    np.cumsum(counts, out=query_start_loc[1:])
    seq_lens = (starts + counts).astype(np.int32)
    total = int(query_start_loc[-1])
    # positions of every token: start of its request + offset inside the request's chunk
    token_req = np.repeat(np.arange(len(req_ids)), counts)
    positions = starts[token_req] + (np.arange(total) - query_start_loc[:-1][token_req])
    max_blocks = max(len(states[r].block_ids) for r in req_ids)
    block_tables = np.zeros((len(req_ids), max_blocks), dtype=np.int32)
    input_ids = np.empty(total, dtype=np.int64)
    sample_rows, logits_indices, spans = [], [], {}
    for i, req_id in enumerate(req_ids):
        state = states[req_id]
        block_tables[i, : len(state.block_ids)] = state.block_ids
        lo, hi = int(starts[i]), int(seq_lens[i])
        input_ids[query_start_loc[i] : query_start_loc[i + 1]] = state.token_ids[lo:hi]
        if hi == len(state.token_ids):
            sample_rows.append(i)
            logits_indices.append(int(query_start_loc[i + 1]) - 1)
        if state.sampling_params.prompt_logprobs is not None and lo < state.num_prompt_tokens - 1:
            # logits at position p score prompt token p + 1
            num_rows = min(hi, state.num_prompt_tokens - 1) - lo
            spans[i] = (int(query_start_loc[i]), num_rows, lo + 1)
    block_ids = block_tables[token_req, positions // block_size]
    slot_mapping = block_ids.astype(np.int64) * block_size + positions % block_size
    return StepInputs(req_ids, input_ids, positions, slot_mapping, query_start_loc, seq_lens, block_tables,
                      sample_rows, np.array(logits_indices, dtype=np.int64), spans)
