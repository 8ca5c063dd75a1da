"""An engine core serving several frontends (``--api-server-count``): each frontend gets the
outputs of the requests it sent and every step's stats; what a frontend aborted is dropped;
utility results go back to the frontend that asked."""

from __future__ import annotations

from pagedlm.engine.core_proc import EngineCoreProc, RoutedResult
from pagedlm.engine.messages import (
    AbortRequests,
    AddRequest,
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    SchedulerStats,
    UtilityCall,
)
from pagedlm.sampling_params import SamplingParams


class _Core:
    def __init__(self) -> None:
        self.added: list[str] = []
        self.aborted: list[str] = []

    def add_request(self, request) -> None:
        self.added.append(request.request_id)

    def abort_requests(self, ids: list[str]) -> None:
        self.aborted += ids

    def stats(self) -> SchedulerStats:
        return SchedulerStats(num_running_reqs=len(self.added))

    def has_unfinished_requests(self) -> bool:
        return False


def _add(request_id: str, client: int) -> AddRequest:
    return AddRequest(EngineCoreRequest(request_id, [1, 2, 3], SamplingParams(max_tokens=4), None, 0.0,
                                        client_index=client))


def test_outputs_go_to_the_frontend_that_sent_the_request() -> None:
    proc = EngineCoreProc(_Core(), 0, None, [None, None, None])
    for request_id, client in (("a", 0), ("b", 1), ("c", 1), ("d", 2)):
        proc._apply(_add(request_id, client))
    stats = SchedulerStats(num_running_reqs=4)
    step = EngineCoreOutputs(0, [EngineCoreOutput("a", [5]), EngineCoreOutput("b", [6]),
                                 EngineCoreOutput("c", [7], finish_reason="length")], stats, 1.5)
    routed = proc._route(step)
    assert [[o.req_id for o in r.outputs] for r in routed] == [["a"], ["b", "c"], []]
    assert all(r.scheduler_stats is stats and r.timestamp == 1.5 and r.engine_index == 0 for r in routed)
    # "c" finished: forgotten; "d" aborted by its frontend: its later outputs are dropped
    proc._apply(AbortRequests(["d"]))
    later = proc._route(EngineCoreOutputs(0, [EngineCoreOutput("c", [8]), EngineCoreOutput("d", [9]),
                                              EngineCoreOutput("b", [10])], stats))
    assert [[o.req_id for o in r.outputs] for r in later] == [[], ["b"], []]
    assert proc._client_of == {"a": 0, "b": 1}


def test_one_frontend_keeps_no_routing_table() -> None:
    proc = EngineCoreProc(_Core(), 0, None, [None])
    proc._apply(_add("a", 0))
    assert proc._client_of == {}


def test_utility_results_go_back_to_the_caller() -> None:
    proc = EngineCoreProc(_Core(), 3, None, [None, None])
    proc._apply(UtilityCall(7, "ping", [], client_index=1))
    proc._apply(UtilityCall(8, "no_such_method", [], client_index=0))
    first, second = proc.output_queue.get_nowait(), proc.output_queue.get_nowait()
    assert isinstance(first, RoutedResult) and first.client_index == 1
    assert first.result.call_id == 7 and first.result.result is True and first.result.engine_index == 3
    assert second.client_index == 0 and "unknown utility method" in second.result.error
