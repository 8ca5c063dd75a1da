"""Plain data that crosses the scheduler / model runner / frontend boundaries.

No torch here: these must pickle (or msgpack) so the runner and the frontend can live in
other processes later without redesign.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pagedlm.sampling_params import SamplingParams


@dataclass(slots=True)
class NewRequestData:
    """A request the runner has not seen (or must rebuild after preemption), in full."""

    req_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # non-empty only when resuming a preempted request
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int


@dataclass(slots=True)
class CachedRequestData:
    """A request the runner already holds: only what changed."""

    req_id: str
    new_block_ids: list[int]
    num_computed_tokens: int


@dataclass(slots=True)
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]  # req_id -> tokens computed this step
    total_num_scheduled_tokens: int
    finished_req_ids: set[str]  # finished or aborted since the last step: drop their state
    preempted_req_ids: set[str] = field(default_factory=set)


@dataclass(slots=True)
class LogprobsLists:
    """Per position: the target token first, then the top-k."""

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    ranks: list[int]


@dataclass(slots=True)
class ModelRunnerOutput:
    req_ids: list[str]  # in scheduled order
    sampled_token_ids: list[list[int]]  # per request; empty while its prefill is partial
    logprobs: dict[str, LogprobsLists] = field(default_factory=dict)  # one row per sampled token
    prompt_logprobs: dict[str, LogprobsLists] = field(default_factory=dict)  # rows for this chunk


@dataclass(slots=True)
class EngineCoreOutput:
    req_id: str
    new_token_ids: list[int]
    new_logprobs: LogprobsLists | None = None
    new_prompt_logprobs: LogprobsLists | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    error: str | None = None
    first_scheduled_time: float | None = None  # wall clock when the request first got a step

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
