"""The model runner's speculative-decoding seam: drafts into the step, verification of every
draft position from one target forward, and proposals for the next step.

The runner calls five hooks (update_states, append_drafts, after_forward, sample, propose);
everything else about speculation lives here and in the proposers.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from pagedlm.engine.messages import ModelRunnerOutput, SchedulerOutput
from pagedlm.sample.metadata import build_sampling_metadata
from pagedlm.spec_decode.rejection_sampler import RejectionOutput, emitted_counts, rejection_sample
from pagedlm.structured_output.apply import apply_grammar_bitmask

if TYPE_CHECKING:
    from pagedlm.spec_decode.verify_graphs import VerifyGraphRunner
    from pagedlm.worker.input_batch import CachedRequestState, StepInputs
    from pagedlm.worker.inflight_step import InflightStep
    from pagedlm.worker.model_runner import ModelRunner
    from pagedlm.worker.persistent_batch import PersistentBatch


logger = logging.getLogger(__name__)

def can_speculate(state: "CachedRequestState") -> bool:
    """Per-request opt-out: prompt logprobs (scored in prefill chunks only) and grammars
    (one bitmask per step) run without drafts; the rest of the batch still speculates."""
    sp = state.sampling_params
    return state.pooling_params is None and sp.prompt_logprobs is None and sp.structured_outputs is None


@dataclass
class SpecStep:
    """A verify step's results on the device, read back by resolve()."""

    result: RejectionOutput
    num_drafts: list[int]  # per sample row
    states: list["CachedRequestState"]


class SpecDecodeRunner:
    def __init__(self, runner: "ModelRunner") -> None:
        from pagedlm.spec_decode.proposers import build_proposer

        self.runner = runner
        self.config = runner.config.speculative_config
        self.proposer = build_proposer(self.config, runner)
        # req_id -> draft distributions [k, V] of its pending drafts (draft models; None for n-gram)
        self.draft_probs: dict[str, torch.Tensor] = {}

    @property
    def allows_target_graphs(self) -> bool:
        """EAGLE-3 reads target layers' inputs through hooks, which a graph replay skips."""
        return self.config.method != "eagle3"

    def capture_verify_graphs(self, pool: tuple | None, largest_only: bool = False) -> "VerifyGraphRunner":
        """CUDA graphs for verify steps (1 + k query tokens per request), in the decode
        graphs' memory pool (``largest_only``: the largest size alone, ModelRunner._capture_graphs)."""
        from pagedlm.spec_decode.verify_graphs import VerifyGraphRunner

        runner, sizes = self.runner, self._verify_sizes()
        graphs = VerifyGraphRunner(runner.model, runner.buffers, sizes[-1:] if largest_only else sizes,
                                   self.config.num_speculative_tokens + 1, runner.config.scheduler_config.max_model_len,
                                   pool)
        graphs.capture()
        return graphs

    def capture_proposer_graphs(self, capture: bool = True, largest_only: bool = False) -> None:
        """A draft model's chain steps (one token per request, batch sizes on the decode
        ladder up to where speculation pauses; ``largest_only``: the largest alone) and
        mirrors of the target's graphs."""
        if not hasattr(self.proposer, "use_graphs"):
            return
        sizes = self._chain_sizes()
        try:
            self.proposer.use_graphs(sizes[-1:] if largest_only else sizes, capture)
        except Exception:  # a model whose forward cannot be captured still drafts, eagerly
            logger.warning("draft model CUDA graphs not captured; the draft model runs eagerly", exc_info=True)
            self.proposer.graphs = None

    def _verify_sizes(self) -> list[int]:
        from pagedlm.spec_decode.verify_graphs import verify_sizes

        buffers = self.runner.buffers
        return verify_sizes(self.runner.decode_graph_sizes(), self.config.num_speculative_tokens + 1, buffers.max_seqs,
                            buffers.max_tokens, self.config.disable_by_batch_size)

    def _chain_sizes(self) -> list[int]:
        from pagedlm.spec_decode.verify_graphs import verify_sizes

        unbounded = 1 << 62  # the chain has buffers of its own: only the ladder and the pause bound it
        return verify_sizes(self.runner.decode_graph_sizes(), 1, unbounded, unbounded, self.config.disable_by_batch_size)

    def drop_proposer_graphs(self) -> None:
        if getattr(self.proposer, "graphs", None) is not None:
            self.proposer.graphs = None

    def share_kv_budget(self, num_blocks: int) -> int:
        """Blocks when a draft model's cache (same block ids) takes its share of the budget."""
        from pagedlm.worker.memory import kv_cache_bytes_per_block

        draft = self.proposer.kv_bytes_per_block()
        if not draft:
            return num_blocks
        target = kv_cache_bytes_per_block(self.runner.config)
        return max(1, num_blocks * target // (target + draft))

    # ---- before the forward -------------------------------------------------------------
    def roll_back(self, sched: SchedulerOutput, states: dict[str, "CachedRequestState"]) -> None:
        """Before this step's new blocks are appended: mirror the scheduler's rollback (blocks
        past the computed tokens were freed) in the request and its persistent row."""
        bs, batch = self.runner.block_size, self.runner.batch
        for data in sched.scheduled_cached_reqs:
            state = states[data.req_id]
            num_kept = -(-data.num_computed_tokens // bs)
            if len(state.block_ids) > num_kept:
                del state.block_ids[num_kept:]
                batch.truncate_blocks(batch.row_of[data.req_id], num_kept)

    def update_states(self, sched: SchedulerOutput, states: dict[str, "CachedRequestState"]) -> None:
        """Take this step's drafts (and forget the draft distributions of requests gone)."""
        for req_id in list(self.draft_probs):
            if req_id not in states:
                del self.draft_probs[req_id]
        for req_id, state in states.items():
            state.spec_token_ids = sched.scheduled_spec_decode_tokens.get(req_id, [])

    @contextmanager
    def append_drafts(self, states: dict[str, "CachedRequestState"]) -> Iterator[None]:
        """The drafts are input tokens of this step (after each request's last token) while
        the step inputs are built; they are not part of the request until accepted."""
        drafted = [s for s in states.values() if s.spec_token_ids]
        for state in drafted:
            state.token_ids.extend(state.spec_token_ids)
        try:
            yield
        finally:
            for state in drafted:
                del state.token_ids[len(state.token_ids) - len(state.spec_token_ids):]

    def after_forward(self, inputs: "StepInputs", hidden: torch.Tensor | None) -> None:
        self.proposer.after_target_forward(inputs, hidden)

    # ---- verification -------------------------------------------------------------------
    def verifies(self, inputs: "StepInputs") -> bool:
        """Whether any request of the step carries drafts. A step without any samples
        through the plain sampler (and its CUDA graphs), as with speculation off: the
        rejection sampler without drafts would compute the same greedy tokens and logprobs
        and sample from the same distribution, only slower (speculation paused at a large
        batch, n-gram misses, prefills)."""
        requests = self.runner.requests
        return any(requests[r].spec_token_ids for r in inputs.req_ids)

    def sample(self, hidden: torch.Tensor, inputs: "StepInputs", step: "InflightStep", sched: SchedulerOutput) -> None:
        runner = self.runner
        states = [runner.requests[inputs.req_ids[i]] for i in inputs.sample_rows]
        num_drafts = [len(s.spec_token_ids) for s in states]
        last = inputs.query_start_loc[1:][inputs.sample_rows].astype(np.int64) - 1  # each request's last token
        rows = np.concatenate([np.arange(e - k, e + 1) for e, k in zip(last.tolist(), num_drafts)])
        indices = torch.from_numpy(rows).to(runner.device, non_blocking=True)
        logits = runner.model.compute_logits(hidden.index_select(0, indices))  # [N, V]
        bonus_rows = np.cumsum(np.array(num_drafts) + 1) - 1
        if sched.structured_output_request_ids:  # constrained requests have no drafts: their bonus row
            row_of = {s.req_id: int(bonus_rows[b]) for b, s in enumerate(states)}
            logits = apply_grammar_bitmask(logits, sched.grammar_bitmask,
                                           [row_of[r] for r in sched.structured_output_request_ids])
        penalty_rows = self._penalty_rows(states)
        md = self._expanded_metadata(states, penalty_rows)
        drafts = [d for s in states for d in s.spec_token_ids + [-1]]
        draft_ids = torch.tensor(drafts, dtype=torch.int64).to(runner.device, non_blocking=True)
        is_draft = draft_ids >= 0
        result = rejection_sample(logits, draft_ids, is_draft, md, self._draft_probs(states, len(drafts)),
                                  draft_rows=[row for row, d in enumerate(drafts) if d >= 0],
                                  logprobs_mode=runner.config.model_config.logprobs_mode)
        if penalty_rows is not None:  # a request without drafts emits its bonus token: counted now
            self._record_undrafted(penalty_rows, num_drafts, bonus_rows, result.tokens)
        # (async) a request without drafts may run ahead: the next step's input is its one
        # token in result.tokens, which has one row per verified position (fill_pending).
        step.row_of = {s.req_id: int(bonus_rows[b]) for b, s in enumerate(states)}
        step.rows = inputs.sample_rows
        step.num_logprobs = [s.sampling_params.logprobs for s in states]
        step.sampled = result.tokens  # marks the step as sampling; resolve() goes through SpecStep
        step.resolver = lambda st, all_states, batch: resolve(st, SpecStep(result, num_drafts, states), all_states,
                                                              batch)
        for state in states:
            state.num_pending += 1

    def _penalty_rows(self, states: list["CachedRequestState"]) -> np.ndarray | None:
        """The sample rows' persistent rows, when any is penalised (None: no penalties)."""
        batch = self.runner.batch
        rows = batch.rows_of([s.req_id for s in states])
        return rows if batch.output_counts is not None and batch.penalised[rows].any() else None

    def _expanded_metadata(self, states: list["CachedRequestState"], penalty_rows: np.ndarray | None):
        """One sampling row per verified position: row j of a request sees its drafts 1..j as
        already generated (penalties, min_tokens, bad words), as the plain path would.

        Penalties read the persistent batch's device counts, not the token lists: under
        async scheduling a request without drafts may run ahead, and its list then lacks
        the token of its step still in flight, which the device counts already hold."""
        params, prompts, outputs, gens = [], [], [], []
        for s in states:
            for j in range(len(s.spec_token_ids) + 1):
                params.append(s.sampling_params)
                prompts.append(s.prompt_token_ids)
                outputs.append(s.output_token_ids + s.spec_token_ids[:j] if j else s.output_token_ids)
                gens.append(s.generator)
        penalty_state = self._expanded_penalty_state(states, penalty_rows) if penalty_rows is not None else None
        return build_sampling_metadata(params, prompts, outputs, gens, self.runner.vocab_size, self.runner.device,
                                       penalty_state)

    def _expanded_penalty_state(self, states: list["CachedRequestState"],
                                rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(output counts [N, V], prompt mask [N, V] or None) per verified position: the row's
        device counts, plus its drafts 1..j on row j."""
        batch, device, vocab = self.runner.batch, self.runner.device, self.runner.vocab_size
        expanded = np.repeat(rows, [len(s.spec_token_ids) + 1 for s in states])
        expanded_t = _upload(expanded, device)
        counts = batch.output_counts.index_select(0, expanded_t)  # [N, V] int32, a copy
        draft_rows, draft_ids = [], []
        first = 0
        for s in states:
            for j in range(1, len(s.spec_token_ids) + 1):
                for d in s.spec_token_ids[:j]:
                    if 0 <= d < vocab:
                        draft_rows.append(first + j)
                        draft_ids.append(d)
            first += len(s.spec_token_ids) + 1
        if draft_rows:
            index = (_upload(np.array(draft_rows), device), _upload(np.array(draft_ids), device))
            counts.index_put_(index, torch.ones(len(draft_rows), dtype=counts.dtype, device=device), accumulate=True)
        mask = batch.prompt_mask.index_select(0, expanded_t) if batch.prompt_mask is not None else None
        return counts, mask

    def _record_undrafted(self, rows: np.ndarray, num_drafts: list[int], bonus_rows: np.ndarray,
                          tokens: torch.Tensor) -> None:
        """Counts of the requests without drafts, at sample time as the plain sampler keeps
        them: one of them may run ahead into a step launched before this one is resolved.
        (A request with drafts waits for its step, so resolve() counts its tokens.)"""
        undrafted = [b for b, k in enumerate(num_drafts) if k == 0]
        if not undrafted:
            return
        device = self.runner.device
        sampled = tokens.index_select(0, _upload(bonus_rows[undrafted], device))
        self.runner.batch.record_sampled(_upload(rows[undrafted], device), sampled)

    def _draft_probs(self, states: list["CachedRequestState"], num_rows: int) -> torch.Tensor | None:
        """[N, V] draft distributions (bonus rows zero), or None when drafts are point masses."""
        if not any(s.req_id in self.draft_probs for s in states if s.spec_token_ids):
            return None
        out = torch.zeros(num_rows, self.runner.vocab_size, device=self.runner.device)
        row = 0
        for s in states:
            k = len(s.spec_token_ids)
            probs = self.draft_probs.pop(s.req_id, None)
            if k and probs is not None:
                out[row : row + k] = probs[:k]
            elif k:  # no distribution kept (cannot happen with one proposer): a point mass
                out[row + torch.arange(k, device=out.device), torch.tensor(s.spec_token_ids, device=out.device)] = 1.0
            row += k + 1
        return out

    # ---- after the step -----------------------------------------------------------------
    def propose(self, output: ModelRunnerOutput, states: dict[str, "CachedRequestState"]) -> None:
        """Drafts for every request that sampled this step and may speculate."""
        if hasattr(self.proposer, "before_propose"):  # EAGLE: its pass over the step's tokens
            self.proposer.before_propose(output, states)
        sampled = [states[r] for r, ids in zip(output.req_ids, output.sampled_token_ids)
                   if ids and r in states and can_speculate(states[r])]
        max_len = self.runner.config.model_config.max_model_len
        sampled = [s for s in sampled if len(s.token_ids) < max_len]
        limit = self.config.disable_by_batch_size
        if not sampled or (limit is not None and len(states) >= limit):  # the scheduler would drop them
            return
        drafts, probs = self.proposer.propose(sampled)
        for state, ids in zip(sampled, drafts):
            if ids:
                output.spec_token_ids[state.req_id] = ids
        if probs is not None:
            for state, p in zip(sampled, probs):
                if p is not None:
                    self.draft_probs[state.req_id] = p


def resolve(step: "InflightStep", spec: SpecStep, states: dict[str, "CachedRequestState"],
            batch: "PersistentBatch | None") -> None:
    """The verify step's one device-to-host copy, then each request's emitted tokens (the
    accepted drafts and the bonus token) into the runner's requests and persistent rows."""
    from pagedlm.worker.inflight_step import logprobs_lists

    result = spec.result
    packed = torch.stack((result.tokens, result.accepted.to(torch.int64))).tolist()
    tokens, accepted = packed[0], [bool(a) for a in packed[1]]
    logprobs = result.logprobs.to_cpu() if result.logprobs is not None else None
    counts = emitted_counts(accepted, spec.num_drafts)
    first = 0
    landed: dict[int, list[int]] = {}  # persistent row -> its emitted tokens
    for b, i in enumerate(step.rows):
        req_id = step.output.req_ids[i]
        emitted = tokens[first : first + counts[b]]
        step.output.sampled_token_ids[i] = emitted
        k = step.num_logprobs[b]
        if logprobs is not None and k is not None:
            step.output.logprobs[req_id] = logprobs_lists(logprobs.slice_rows(first, first + counts[b]), k)
        state = states.get(req_id)
        if state is not None:
            state.output_token_ids.extend(emitted)
            state.token_ids.extend(emitted)
            state.num_pending -= 1
            if batch is not None:
                batch.append_tokens(batch.row_of[req_id], emitted)
                if spec.num_drafts[b]:  # counted at sample time without drafts (_record_undrafted)
                    landed[batch.row_of[req_id]] = emitted
        first += spec.num_drafts[b] + 1
    if batch is not None and landed:
        _record_penalty_counts(batch, landed)


def _record_penalty_counts(batch: "PersistentBatch", landed: dict[int, list[int]]) -> None:
    """Penalty counts on the device for the emitted tokens of requests that had drafts (-1
    pads the rest), which the next step of theirs (verify or plain) reads."""
    if batch.output_counts is None:
        return
    width = max(map(len, landed.values()))
    padded = [ids + [-1] * (width - len(ids)) for ids in landed.values()]
    batch.record_sampled(torch.tensor(list(landed), dtype=torch.int64, device=batch.device),
                         torch.tensor(padded, dtype=torch.int64, device=batch.device))


def _upload(host: np.ndarray, device: torch.device) -> torch.Tensor:
    """int64 host indices -> device, without blocking (pinned on CUDA)."""
    cpu = torch.from_numpy(np.ascontiguousarray(host, dtype=np.int64))
    return cpu.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else cpu
