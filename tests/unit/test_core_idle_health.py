"""The engine-core loop, blocked on its input queue with nothing to run, still checks its
workers: a worker that died while the engine idled fails the engine within a second, and
an input that arrives is applied at once."""

from __future__ import annotations

import time

import pytest

from pagedlm.engine.core_proc import IDLE_HEALTH_CHECK_S, EngineCoreProc
from pagedlm.engine.messages import UtilityCall
from pagedlm.executor.base import WorkerDiedError


class _Core:
    def __init__(self, healthy_checks: int) -> None:
        self.healthy_checks = healthy_checks
        self.num_checks = 0

    def check_health(self) -> None:
        self.num_checks += 1
        if self.num_checks > self.healthy_checks:
            raise WorkerDiedError("worker process(es) died: rank 1 (exit code -9)")


def test_idle_loop_notices_a_dead_worker() -> None:
    core = _Core(healthy_checks=1)
    proc = EngineCoreProc(core, 0, None, [None])
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match="rank 1"):
        proc._process_inputs(block=True)
    assert core.num_checks == 2
    assert time.monotonic() - start < 4 * IDLE_HEALTH_CHECK_S + 1.0


def test_idle_loop_applies_an_input_without_a_check() -> None:
    core = _Core(healthy_checks=0)
    proc = EngineCoreProc(core, 0, None, [None])
    proc.input_queue.put(UtilityCall(1, "ping", []))
    proc._process_inputs(block=True)
    assert core.num_checks == 0
    assert proc.output_queue.get_nowait().result.result is True
