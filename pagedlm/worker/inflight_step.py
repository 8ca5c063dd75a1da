"""A launched step whose sampled ids are still on the device: under async scheduling the next
step launches before this one is collected, so the step keeps its device tensors, queues their
copy to pinned host memory behind the sampler, and resolve() lands them in the output and in
the runner's request states."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from pagedlm.engine.messages import LogprobsLists, ModelRunnerOutput
from pagedlm.sample.logprobs import LogprobsTensors, pinned_copy
from pagedlm.worker.input_batch import CachedRequestState
from pagedlm.worker.persistent_batch import PersistentBatch


@dataclass
class InflightStep:
    """A launched step: its sampled ids stay on the device until resolve()."""

    output: ModelRunnerOutput
    sampled: torch.Tensor | None = None  # [S] int64 on the device
    logprobs: LogprobsTensors | None = None
    rows: list[int] = field(default_factory=list)  # sample row -> index in output.req_ids
    row_of: dict[str, int] = field(default_factory=dict)  # req_id -> sample row
    num_logprobs: list[int | None] = field(default_factory=list)  # per sample row
    resolved: bool = False
    feeds_states: bool = True  # append the samples to the runner's requests (False: the scheduler sends them)
    # CUDA: the samples' copy to pinned host memory, queued right behind the sampler, and the
    # event that marks it done. Under async scheduling the next step is launched before this
    # one is collected; waiting on this event (not the stream) keeps the collection from also
    # waiting for that next step, which would delay every token by a step and idle the device
    # while the host processes outputs.
    host_sampled: torch.Tensor | None = None
    host_logprobs: LogprobsTensors | None = None
    ready: torch.cuda.Event | None = None
    # A step sampled another way (speculative verification) brings its results back itself.
    resolver: Callable[["InflightStep", dict[str, CachedRequestState], PersistentBatch | None], None] | None = None

    def start_host_copy(self) -> None:
        if self.sampled is None or self.sampled.device.type != "cuda":
            return
        self.host_sampled = pinned_copy(self.sampled)
        self.host_logprobs = self.logprobs.to_host_async() if self.logprobs is not None else None
        self.ready = torch.cuda.Event()
        self.ready.record()

    def resolve(self, states: dict[str, CachedRequestState], batch: PersistentBatch | None = None) -> None:
        """Bring the sampled ids to the host (the step's one device-to-host copy) and append
        them to the runner's copy of each request that still exists."""
        if self.resolved or self.sampled is None:
            self.resolved = True
            return
        self.resolved = True
        if self.resolver is not None:
            return self.resolver(self, states, batch)
        if self.ready is not None:
            self.ready.synchronize()
            sampled, logprobs = self.host_sampled.tolist(), self.host_logprobs
        else:
            sampled = self.sampled.tolist()
            logprobs = self.logprobs.to_cpu() if self.logprobs is not None else None
        landed_rows: list[int] = []  # persistent rows of the requests still there, and their tokens
        landed_ids: list[int] = []
        for row, i in enumerate(self.rows):
            req_id = self.output.req_ids[i]
            token_id = sampled[row]
            self.output.sampled_token_ids[i] = [token_id]
            k = self.num_logprobs[row]
            if logprobs is not None and k is not None:
                self.output.logprobs[req_id] = logprobs_lists(logprobs.slice_rows(row, row + 1), k)
            state = states.get(req_id) if self.feeds_states else None
            if state is not None:  # gone if finished or preempted meanwhile
                state.output_token_ids.append(token_id)
                state.token_ids.append(token_id)
                state.num_pending -= 1
                if batch is not None:
                    landed_rows.append(batch.row_of[req_id])
                    landed_ids.append(token_id)
        if landed_rows:
            batch.append_sampled(np.array(landed_rows), np.array(landed_ids))


def logprobs_lists(t: LogprobsTensors, k: int) -> LogprobsLists:
    top_ranks = None if t.top_ranks is None else t.top_ranks[:, :k].tolist()
    return LogprobsLists(t.token_ids[:, : k + 1].tolist(), t.logprobs[:, : k + 1].tolist(), t.ranks.tolist(), top_ranks)


def concat_logprobs_lists(parts: list[LogprobsLists]) -> LogprobsLists:
    """The rows of ``parts`` in order, as one LogprobsLists (prompt logprobs computed in slices)."""
    if len(parts) == 1:
        return parts[0]
    top_ranks = None if parts[0].top_ranks is None else [r for p in parts for r in p.top_ranks]
    return LogprobsLists([r for p in parts for r in p.token_ids], [r for p in parts for r in p.logprobs],
                         [r for p in parts for r in p.ranks], top_ranks)
