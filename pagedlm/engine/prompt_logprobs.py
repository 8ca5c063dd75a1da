"""Prompt logprobs across preemption: each prompt position is delivered once.

A request with prompt logprobs gets no prefix-cache hits, so after a preemption (recompute)
its prompt is computed again from the start and the runner scores those positions again.
The frontend appends every chunk it receives, so rows it already has are dropped here.
"""

from __future__ import annotations

from pagedlm.engine.messages import LogprobsLists, SchedulerOutput
from pagedlm.engine.request import Request


def step_start(sched: SchedulerOutput, req_id: str) -> int:
    """The request's computed tokens when ``sched`` was scheduled (its chunk's first position)."""
    for data in sched.scheduled_cached_reqs:
        if data.req_id == req_id:
            return data.num_computed_tokens
    for new in sched.scheduled_new_reqs:
        if new.req_id == req_id:
            return new.num_computed_tokens
    raise KeyError(f"request {req_id} is not in the step")


def unsent_prompt_logprobs(request: Request, sched: SchedulerOutput, rows: LogprobsLists) -> LogprobsLists | None:
    """The rows of ``rows`` (this step's chunk; row i scores prompt position start + 1 + i)
    not delivered before; None when all were."""
    start = step_start(sched, request.request_id)
    skip = max(0, request.num_prompt_logprobs_sent - start)
    request.num_prompt_logprobs_sent = max(request.num_prompt_logprobs_sent, start + len(rows.ranks))
    if skip == 0:
        return rows
    if skip >= len(rows.ranks):
        return None
    return LogprobsLists(rows.token_ids[skip:], rows.logprobs[skip:], rows.ranks[skip:])
