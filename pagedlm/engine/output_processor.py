"""EngineCoreOutputs -> RequestOutputs: detokenize, stop strings, logprobs, n > 1 fan-in."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from pagedlm.engine.detokenizer import IncrementalDetokenizer
from pagedlm.engine.messages import EngineCoreOutput, LogprobsLists
from pagedlm.engine.request import Request
from pagedlm.outputs import CompletionOutput, Logprob, PromptLogprobs, RequestMetrics, RequestOutput, SampleLogprobs


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

    def completion(self, delta: bool) -> CompletionOutput:
        finished = self.finish_reason is not None
        return CompletionOutput(
            index=self.index,
            text=self.detokenizer.get_next_output_text(finished, delta),
            token_ids=list(self.token_ids),
            cumulative_logprob=self.cumulative_logprob,
            logprobs=self.logprobs,
            finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )


@dataclass
class ParentState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    children: dict[str, ChildState]
    prompt_logprobs: PromptLogprobs | None
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    error: str | None = None
    num_unfinished: int = 0

    def __post_init__(self) -> None:
        self.num_unfinished = len(self.children)

    @property
    def finished(self) -> bool:
        return self.num_unfinished == 0

    def finish_child(self, child: ChildState, reason: str, stop_reason: int | str | None) -> None:
        child.finish_reason, child.stop_reason = reason, stop_reason
        self.num_unfinished -= 1


def _logprob_dict(ids: list[int], lps: list[float], rank: int, decode) -> dict[int, Logprob]:
    # Column 0 is the sampled / target token (with its true rank), then the top-k by rank.
    out = {ids[0]: Logprob(lps[0], rank, decode(ids[0]))}
    for r, (tid, lp) in enumerate(zip(ids[1:], lps[1:]), start=1):
        if tid not in out:
            out[tid] = Logprob(lp, r, decode(tid))
    return out


class OutputProcessor:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.parents: dict[str, ParentState] = {}
        self.child_to_parent: dict[str, str] = {}

    def add_request(self, parent_id: str, prompt: str | None, children: list[Request]) -> None:
        first = children[0]
        params = first.sampling_params
        states = {}
        for index, child in enumerate(children):
            detok = IncrementalDetokenizer(self.tokenizer, child.prompt_token_ids, child.sampling_params)
            state = ChildState(index, detok)
            if params.logprobs is not None:
                state.logprobs, state.cumulative_logprob = [], 0.0
            states[child.request_id] = state
            self.child_to_parent[child.request_id] = parent_id
        self.parents[parent_id] = ParentState(
            request_id=parent_id, prompt=prompt, prompt_token_ids=first.prompt_token_ids, children=states,
            prompt_logprobs=[None] if params.prompt_logprobs is not None else None,
            metrics=RequestMetrics(arrival_time=first.arrival_time),
        )

    def process_outputs(
        self, outputs: list[EngineCoreOutput], delta: bool = False, final_only: bool = False
    ) -> tuple[list[RequestOutput], list[str]]:
        """-> (RequestOutputs of parents that changed, child ids stopped by a stop string, which
        the caller must finish in the engine core). ``final_only`` builds outputs for finished
        requests only (offline generate needs nothing else, and copying every running
        request's tokens each step costs time that grows with the output)."""
        changed: dict[str, ParentState] = {}
        stopped: list[str] = []
        now = time.time()
        for out in outputs:
            parent_id = self.child_to_parent.get(out.req_id)
            if parent_id is None:
                continue
            parent = self.parents[parent_id]
            child = parent.children[out.req_id]
            if child.finish_reason is not None:
                continue
            if self._process_one(parent, child, out, now):
                stopped.append(out.req_id)
            changed[parent_id] = parent
        results = [self._make_output(p, delta) for p in changed.values() if not final_only or p.finished]
        for parent in changed.values():
            if parent.finished:
                self._remove(parent)
        return results, stopped

    def _process_one(self, parent: ParentState, child: ChildState, out: EngineCoreOutput, now: float) -> bool:
        if out.new_prompt_logprobs is not None and parent.prompt_logprobs is not None and child.index == 0:
            parent.prompt_logprobs.extend(self._to_dicts(out.new_prompt_logprobs, child))
        parent.num_cached_tokens = out.num_cached_tokens
        if parent.metrics.first_scheduled_time is None:
            parent.metrics.first_scheduled_time = out.first_scheduled_time
        if out.error is not None:
            parent.error = out.error
        if out.new_token_ids:
            if parent.metrics.first_token_time is None:
                parent.metrics.first_token_time = now
            parent.metrics.last_token_time = now
        child.token_ids.extend(out.new_token_ids)
        if out.new_logprobs is not None and child.logprobs is not None:
            child.logprobs.extend(self._to_dicts(out.new_logprobs, child))
            child.cumulative_logprob += sum(row[0] for row in out.new_logprobs.logprobs)
        # EOS (stop_reason None) or a stop token id ended it: that last token is not text.
        stop_terminated = out.finish_reason == "stop" and not isinstance(out.stop_reason, str)
        stop_str = child.detokenizer.update(out.new_token_ids, stop_terminated)
        if stop_str is not None:
            parent.finish_child(child, "stop", stop_str)
            return not out.finished
        if out.finished:
            parent.finish_child(child, out.finish_reason, out.stop_reason)
        return False

    def _to_dicts(self, lists: LogprobsLists, child: ChildState) -> list[dict[int, Logprob]]:
        decode = child.detokenizer.decode_token
        return [_logprob_dict(ids, lps, rank, decode) for ids, lps, rank in zip(lists.token_ids, lists.logprobs, lists.ranks)]

    def _make_output(self, parent: ParentState, delta: bool) -> RequestOutput:
        finished = parent.finished
        if finished:
            parent.metrics.finished_time = time.time()
        return RequestOutput(
            request_id=parent.request_id,
            prompt=parent.prompt,
            prompt_token_ids=parent.prompt_token_ids,
            prompt_logprobs=parent.prompt_logprobs,
            outputs=[c.completion(delta) for c in parent.children.values()],
            finished=finished,
            num_cached_tokens=parent.num_cached_tokens,
            metrics=parent.metrics,
            error=parent.error,
        )

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
