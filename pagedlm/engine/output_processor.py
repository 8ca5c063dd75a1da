"""EngineCoreOutputs -> RequestOutputs: detokenize, stop strings, logprobs, n > 1 fan-in.

Runs in the frontend (the API process, or the offline LLM's process). Each step's work is
proportional to what is new: a running request's history is never copied, and each parent
request builds an output only when its kind asks for one (DELTA: what is new; FINAL_ONLY: one
output at the end; CUMULATIVE: everything so far, for callers that want vLLM's old shape).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pagedlm.engine.detokenizer import IncrementalDetokenizer
from pagedlm.engine.messages import EngineCoreOutput, EngineCoreRequest, LogprobsLists
from pagedlm.logprobs import FlatLogprobs
from pagedlm.lora.request import LoRARequest
from pagedlm.outputs import (
    CompletionOutput,
    Logprob,
    PoolingOutput,
    PoolingRequestOutput,
    PromptLogprobs,
    RequestMetrics,
    RequestOutput,
    SampleLogprobs,
)
from pagedlm.sampling_params import RequestOutputKind


@dataclass
class ChildState:
    """One sequence (one of a request's n choices)."""

    index: int
    detokenizer: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    logprobs: SampleLogprobs | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    # This sequence's own times and token count, for the metrics: vLLM keeps a request state
    # per sequence of an n > 1 request, so each counts as a request (TTFT, ITL, success, ...).
    timing: RequestMetrics | None = None
    num_generated: int = 0
    num_sent: int = 0  # of num_generated, how many an output has carried (stream_interval)

    def completion(self, kind: RequestOutputKind) -> CompletionOutput:
        finished = self.finish_reason is not None
        delta = kind == RequestOutputKind.DELTA
        if delta:
            # A DELTA request keeps no history here: what is handed out is forgotten.
            token_ids, logprobs = self.token_ids, self.logprobs
            self.token_ids = []
            self.logprobs = type(logprobs)() if logprobs is not None else None  # (a list or FlatLogprobs)
        else:
            token_ids, logprobs = list(self.token_ids), self.logprobs
        return CompletionOutput(
            index=self.index,
            text=self.detokenizer.get_next_output_text(finished, delta),
            token_ids=token_ids,
            cumulative_logprob=self.cumulative_logprob,
            logprobs=logprobs,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )


@dataclass
class ParentState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None  # None: a prompt given as embeddings (as vLLM's)
    children: dict[str, ChildState]
    prompt_logprobs: PromptLogprobs | None
    metrics: RequestMetrics
    output_kind: RequestOutputKind
    num_cached_tokens: int = 0
    error: str | None = None
    num_unfinished: int = 0
    num_outputs_sent: int = 0
    num_generated: int = 0  # over all children
    is_pooling: bool = False
    pooling_output: Any = None  # the engine's pooled floats, once the request finished
    lora_request: LoRARequest | None = None  # its adapter (RequestOutput.lora_request, as vLLM's)
    max_tokens: int | None = None  # SamplingParams.max_tokens, for the metrics
    num_prompt_tokens: int = 0  # (prompt_token_ids is None for a prompt given as embeddings)
    stream_interval: int = 1  # outputs every this many new tokens of a sequence (DELTA / CUMULATIVE)

    def __post_init__(self) -> None:
        self.num_unfinished = len(self.children)

    @property
    def finished(self) -> bool:
        return self.num_unfinished == 0

    def finish_child(self, child: ChildState, reason: str, stop_reason: int | str | None) -> None:
        child.finish_reason, child.stop_reason = reason, stop_reason
        self.num_unfinished -= 1


@dataclass
class FinishedRequestStats:
    finish_reason: str
    e2e_latency: float
    num_prompt_tokens: int
    num_generation_tokens: int
    queue_time: float | None
    prefill_time: float | None  # first scheduled -> first token
    decode_time: float | None  # first token -> last token
    mean_time_per_output_token: float | None
    max_tokens_param: int | None = None  # the request's max_tokens (vLLM's request_params_max_tokens)


@dataclass
class IterationStats:
    """What one batch of core outputs changed, for the metrics (computed once, here)."""

    num_generation_tokens: int = 0
    # Prompt tokens of the sequences that got their first token in this batch (vLLM counts the
    # prompt once per sequence, when its prefill is done).
    num_prompt_tokens: int = 0
    engine_index: int = 0  # the engine core whose outputs these are (the metrics' "engine" label)
    time_to_first_tokens: list[float] = field(default_factory=list)
    inter_token_latencies: list[float] = field(default_factory=list)
    finished_requests: list[FinishedRequestStats] = field(default_factory=list)
    # Once per request whose sequences all finished: its n and the most tokens one of them generated.
    n_params: list[int] = field(default_factory=list)
    max_num_generation_tokens: list[int] = field(default_factory=list)


@dataclass
class ProcessedOutputs:
    request_outputs: list[RequestOutput]
    stopped_child_ids: list[str]  # stop strings found here: the caller finishes them in the core
    iteration_stats: IterationStats


def _logprob_dict(ids: list[int], lps: list[float], rank: int, decode,
                  top_ranks: list[int] | None = None) -> dict[int, Logprob]:
    # Column 0 is the sampled / target token (with its true rank), then the top-k by rank, or
    # the request's logprob_token_ids with their own ranks (top_ranks).
    out = {ids[0]: Logprob(lps[0], rank, decode(ids[0]))}
    for r, (tid, lp) in enumerate(zip(ids[1:], lps[1:]), start=1):
        if tid not in out:
            out[tid] = Logprob(lp, r if top_ranks is None else top_ranks[r - 1], decode(tid))
    return out


def _new_logprobs(params: Any, start: list | None = None) -> SampleLogprobs | FlatLogprobs:
    """A request's logprobs container: a list of dicts, or vLLM's FlatLogprobs (flat_logprobs)."""
    if not getattr(params, "flat_logprobs", False):
        return list(start or [])
    flat = FlatLogprobs()
    flat.extend(start or [])
    return flat


class OutputProcessor:
    def __init__(self, tokenizer: Any, stream_interval: int = 1) -> None:
        self.tokenizer = tokenizer
        self.stream_interval = stream_interval  # the engine's --stream-interval
        self.parents: dict[str, ParentState] = {}
        self.child_to_parent: dict[str, str] = {}

    def add_request(self, parent_id: str, prompt: str | None, children: list[EngineCoreRequest]) -> None:
        first = children[0]
        params = first.sampling_params
        states = {}
        for index, child in enumerate(children):
            # An embeds prompt's ids are placeholders: its text starts from nothing.
            prompt_ids = [] if child.prompt_embeds is not None else child.prompt_token_ids
            detok = IncrementalDetokenizer(self.tokenizer, prompt_ids, child.sampling_params)
            state = ChildState(index, detok, timing=RequestMetrics(arrival_time=first.arrival_time))
            if params.logprobs is not None:
                state.logprobs, state.cumulative_logprob = _new_logprobs(params), 0.0
            states[child.request_id] = state
            self.child_to_parent[child.request_id] = parent_id
        self.parents[parent_id] = ParentState(
            request_id=parent_id, prompt=prompt, children=states,
            prompt_token_ids=None if first.prompt_embeds is not None else first.prompt_token_ids,
            num_prompt_tokens=first.num_prompt_tokens,
            prompt_logprobs=_new_logprobs(params, [None]) if params.prompt_logprobs is not None else None,
            metrics=RequestMetrics(arrival_time=first.arrival_time), output_kind=params.output_kind,
            is_pooling=first.pooling_params is not None,
            lora_request=LoRARequest.from_wire(first.lora_request),
            max_tokens=getattr(params, "max_tokens", None) if first.pooling_params is None else None,
            stream_interval=max(self.stream_interval, getattr(params, "stream_interval", None) or 1),
        )

    def process_outputs(self, outputs: list[EngineCoreOutput], now: float | None = None) -> ProcessedOutputs:
        """One step's core outputs -> the RequestOutputs their parents' kinds ask for."""
        changed: dict[str, ParentState] = {}
        stopped: list[str] = []
        stats = IterationStats()
        now = time.time() if now is None else now
        for out in outputs:
            parent_id = self.child_to_parent.get(out.req_id)
            if parent_id is None:
                continue
            parent = self.parents[parent_id]
            child = parent.children[out.req_id]
            if child.finish_reason is not None:
                continue
            if self._process_one(parent, child, out, now, stats):
                stopped.append(out.req_id)
            changed[parent_id] = parent
        results = []
        for parent in changed.values():
            output = self._make_output(parent)
            if output is not None:
                results.append(output)
            if parent.finished:
                self._remove(parent)
        return ProcessedOutputs(results, stopped, stats)

    def _process_one(self, parent: ParentState, child: ChildState, out: EngineCoreOutput, now: float,
                     stats: IterationStats) -> bool:
        if out.new_prompt_logprobs is not None and parent.prompt_logprobs is not None and child.index == 0:
            self._extend(parent.prompt_logprobs, out.new_prompt_logprobs, child)
        parent.num_cached_tokens = out.num_cached_tokens
        for metrics in (parent.metrics, child.timing):
            if metrics.first_scheduled_time is None:
                metrics.first_scheduled_time = out.first_scheduled_time
        if out.error is not None:
            parent.error = out.error
        if out.pooling_output is not None:
            parent.pooling_output = out.pooling_output
        if out.new_token_ids:
            if child.timing.first_token_time is None:
                stats.num_prompt_tokens += parent.num_prompt_tokens
            _record_token_times(child.timing, now, stats)
            _record_token_times(parent.metrics, now, None)  # the RequestOutput's own times
            stats.num_generation_tokens += len(out.new_token_ids)
            parent.num_generated += len(out.new_token_ids)
            child.num_generated += len(out.new_token_ids)
        child.token_ids.extend(out.new_token_ids)
        if out.new_logprobs is not None and child.logprobs is not None:
            self._extend(child.logprobs, out.new_logprobs, child)
            child.cumulative_logprob += sum(row[0] for row in out.new_logprobs.logprobs)
        # EOS (stop_reason None) or a stop token id ended it: that last token is not text.
        stop_terminated = out.finish_reason == "stop" and not isinstance(out.stop_reason, str)
        stop_str = child.detokenizer.update(out.new_token_ids, stop_terminated)
        if stop_str is not None:
            parent.finish_child(child, "stop", stop_str)
            _observe_finished(parent, child, now, stats)
            return not out.finished
        if out.finished:
            parent.finish_child(child, out.finish_reason, out.stop_reason)
            _observe_finished(parent, child, now, stats)
        return False

    def _extend(self, target: SampleLogprobs | FlatLogprobs, lists: LogprobsLists, child: ChildState) -> None:
        """Append a step's rows: one dict per position, or, into FlatLogprobs, the columns."""
        decode = child.detokenizer.decode_token
        tops = lists.top_ranks or [None] * len(lists.ranks)
        if isinstance(target, FlatLogprobs):
            for ids, lps, rank, top in zip(lists.token_ids, lists.logprobs, lists.ranks, tops):
                ranks = [rank, *(top if top is not None else range(1, len(ids)))]
                target.append_position(ids, lps, ranks, map(decode, ids))
            return
        target.extend(_logprob_dict(ids, lps, rank, decode, top)
                      for ids, lps, rank, top in zip(lists.token_ids, lists.logprobs, lists.ranks, tops))

    def _make_output(self, parent: ParentState) -> RequestOutput | None:
        finished = parent.finished
        kind = parent.output_kind
        if kind == RequestOutputKind.FINAL_ONLY and not finished:
            return None
        if not finished and not self._due(parent):
            return None
        if finished:
            parent.metrics.finished_time = time.time()
        if parent.is_pooling:
            return _pooling_output(parent)
        # A DELTA stream sends the prompt's logprobs once, whole, with its first output: a long
        # prompt's prefill chunks each bring some, and until the last has, there is nothing to send.
        prompt_logprobs = parent.prompt_logprobs
        if kind == RequestOutputKind.DELTA:
            if (prompt_logprobs is not None and len(prompt_logprobs) < parent.num_prompt_tokens
                    and not finished):
                return None
            if parent.num_outputs_sent > 0:
                prompt_logprobs = None
        parent.num_outputs_sent += 1
        for child in parent.children.values():
            child.num_sent = child.num_generated
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            prompt_logprobs=prompt_logprobs,
            outputs=[c.completion(kind) for c in parent.children.values()],
            finished=finished,
            num_cached_tokens=parent.num_cached_tokens,
            metrics=parent.metrics,
            error=parent.error,
            lora_request=parent.lora_request,
        )

    @staticmethod
    def _due(parent: ParentState) -> bool:
        """stream_interval (vLLM's): an unfinished request's first output goes at once, later
        ones once a sequence has that many tokens not yet handed out (DELTA outputs then carry
        them together)."""
        if parent.stream_interval == 1 or parent.num_outputs_sent == 0:
            return True
        return max(c.num_generated - c.num_sent for c in parent.children.values()) >= parent.stream_interval

    def abort_request(self, parent_id: str) -> list[str]:
        """Forget a request; returns its child ids still to abort in the engine core."""
        parent = self.parents.pop(parent_id, None)
        if parent is None:
            return []
        for child_id in parent.children:
            self.child_to_parent.pop(child_id, None)
        return [cid for cid, c in parent.children.items() if c.finish_reason is None]

    def _remove(self, parent: ParentState) -> None:
        self.parents.pop(parent.request_id, None)
        for child_id in parent.children:
            self.child_to_parent.pop(child_id, None)

    def has_unfinished(self) -> bool:
        return bool(self.parents)


def _record_token_times(metrics: RequestMetrics, now: float, stats: IterationStats | None) -> None:
    # One TTFT per sequence, then one ITL observation per step the sequence advances (as vLLM).
    if metrics.first_token_time is None:
        metrics.first_token_time = now
        if stats is not None:
            stats.time_to_first_tokens.append(now - metrics.arrival_time)
    elif metrics.last_token_time != now and stats is not None:
        stats.inter_token_latencies.append(now - metrics.last_token_time)
    metrics.last_token_time = now


def _observe_finished(parent: ParentState, child: ChildState, now: float, stats: IterationStats) -> None:
    stats.finished_requests.append(_finished_stats(parent, child, now))
    if parent.finished and not parent.is_pooling:
        stats.n_params.append(len(parent.children))
        stats.max_num_generation_tokens.append(max(c.num_generated for c in parent.children.values()))


def _finished_stats(parent: ParentState, child: ChildState, now: float) -> FinishedRequestStats:
    """One finished sequence (each of an n > 1 request's counts, as in vLLM)."""
    m = child.timing
    reason = "error" if parent.error is not None else child.finish_reason or "stop"
    first, last, scheduled = m.first_token_time, m.last_token_time, m.first_scheduled_time
    tpot = None
    if first is not None and last is not None and child.num_generated > 1:
        tpot = (last - first) / (child.num_generated - 1)
    return FinishedRequestStats(
        finish_reason=reason,
        e2e_latency=now - m.arrival_time,
        num_prompt_tokens=parent.num_prompt_tokens,
        num_generation_tokens=child.num_generated,
        queue_time=max(0.0, scheduled - m.arrival_time) if scheduled is not None else None,
        prefill_time=first - scheduled if first is not None and scheduled is not None else None,
        decode_time=last - first if first is not None and last is not None else None,
        mean_time_per_output_token=tpot,
        max_tokens_param=parent.max_tokens,
    )


def _pooling_output(parent: ParentState) -> PoolingRequestOutput:
    import torch

    data = torch.tensor(parent.pooling_output, dtype=torch.float32) if parent.pooling_output is not None else None
    return PoolingRequestOutput(parent.request_id, PoolingOutput(data), parent.prompt_token_ids, parent.finished,
                                parent.num_cached_tokens, parent.prompt, parent.metrics, parent.error)
