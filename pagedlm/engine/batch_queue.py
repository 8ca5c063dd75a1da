"""Pipeline parallelism's batch queue (vLLM's ``step_with_batch_queue``).

With P pipeline stages, one batch at a time leaves P-1 stages idle. The engine core keeps up
to P scheduled batches in flight instead: it launches a batch and, while there is room,
schedules and launches the next one before waiting; once the queue is full (or nothing new
can be scheduled) it waits for the oldest batch and processes its output. Outputs come back
and are processed in launch order.

The scheduler skips a request while a batch holding it is in flight (``inflight_req_ids``):
its next input token is what that batch samples. So the batches in flight hold disjoint
requests, and no stage ever needs a token that is still on its way back. Only the last stage
samples; each cached request's newly sampled tokens reach the other stages inside the next
SchedulerOutput (``CachedRequestData.new_token_ids``), never through a collective that would
make the first stage wait for the last.
"""

from __future__ import annotations

from collections import deque

from pagedlm.config import ConfigError
from pagedlm.engine.messages import EngineCoreOutput, SchedulerOutput
from pagedlm.engine.request import Request
from pagedlm.engine.scheduler import Scheduler
from pagedlm.executor.base import Executor, StepFuture
from pagedlm.structured_output.manager import StructuredOutputManager


def verify_pipeline_options(pipeline_parallel_size: int, async_scheduling: bool | None, pooling: bool) -> None:
    """Refuse the options the batch queue cannot serve, before any worker starts."""
    if pipeline_parallel_size == 1:
        return
    if async_scheduling:
        raise ConfigError("async_scheduling is not supported with pipeline_parallel_size > 1: the pipeline already "
                          "overlaps scheduling with the device through its batch queue (up to "
                          "pipeline_parallel_size batches in flight); leave async_scheduling unset")
    if pooling:
        raise ConfigError("pooling models do not support pipeline_parallel_size > 1 yet; use "
                          "pipeline_parallel_size=1 (tensor_parallel_size works)")


def attach_new_token_ids(sched: SchedulerOutput, requests: dict[str, Request]) -> None:
    """Give each cached request's step the tokens it computes that the runners may not hold
    yet: its sampled tokens (a prompt chunk's tokens are there since the request was new)."""
    for data in sched.scheduled_cached_reqs:
        request = requests[data.req_id]
        start = max(data.num_computed_tokens, request.num_prompt_tokens)
        end = data.num_computed_tokens + sched.num_scheduled_tokens[data.req_id]
        data.new_token_ids = request.all_token_ids[start:end]


class BatchQueue:
    """Up to ``max_depth`` launched batches, oldest first."""

    def __init__(self, scheduler: Scheduler, executor: Executor, structured_output: StructuredOutputManager,
                 max_depth: int) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self.structured_output = structured_output
        self.max_depth = max_depth
        self.queue: deque[tuple[SchedulerOutput, StepFuture]] = deque()
        self.max_depth_reached = 0  # batches with work in flight at once (tests check the pipeline fills)

    def __len__(self) -> int:
        return len(self.queue)

    def step(self) -> list[EngineCoreOutput]:
        """Launch one more batch if there is room and work; else (or when the queue is
        full after it) wait for the oldest batch and return its outputs."""
        if len(self.queue) < self.max_depth and self._may_schedule():
            sched = self.scheduler.schedule()
            if sched.total_num_scheduled_tokens > 0:
                self._submit(sched)
                if len(self.queue) < self.max_depth:
                    return []  # room for another batch: schedule it before waiting on this one
            elif not self.queue:
                # Nothing runnable and nothing in flight (e.g. grammars still compiling): run
                # the empty step as the one-batch engine does, so errors are reported.
                self.structured_output.wait_for_compiles(0.01)
                self._submit(sched)
            else:
                # Every runnable request is in flight: keep this empty step's news (finished
                # and preempted ids) for the next batch the runners see.
                self.scheduler.finished_req_ids |= sched.finished_req_ids
                self.scheduler.preempted_req_ids |= sched.preempted_req_ids
        return self._collect() if self.queue else []

    def _may_schedule(self) -> bool:
        """False when every unfinished request is in flight: schedule() could only return
        an empty step (and count it in the step metrics)."""
        s = self.scheduler
        if not s.has_unfinished_requests():
            return False
        # (Nothing waiting or running but unfinished: errors to report, which a step does.)
        return bool(s.waiting) or not s.running or any(r.request_id not in s.inflight_req_ids for r in s.running)

    def _submit(self, sched: SchedulerOutput) -> None:
        attach_new_token_ids(sched, self.scheduler.requests)
        self.queue.append((sched, self.executor.submit(sched)))
        self.scheduler.inflight_req_ids.update(sched.num_scheduled_tokens)
        if sched.total_num_scheduled_tokens > 0:
            working = sum(1 for s, _ in self.queue if s.total_num_scheduled_tokens > 0)
            self.max_depth_reached = max(self.max_depth_reached, working)

    def _collect(self) -> list[EngineCoreOutput]:
        sched, future = self.queue.popleft()
        output = future.result()
        self.scheduler.inflight_req_ids = {r for s, _ in self.queue for r in s.num_scheduled_tokens}
        return self.scheduler.update_from_output(sched, output)
