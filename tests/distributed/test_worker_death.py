"""A worker process killed mid-generation fails the engine quickly and cleanly: the step
raises WorkerDiedError (bounded wait, no hang), the other workers are stopped, and every
later step fails at once."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pagedlm import EngineArgs, SamplingParams
from pagedlm.engine.llm_engine import LLMEngine
from pagedlm.executor.base import WorkerDiedError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("death")))


def test_killed_worker_stops_the_engine(checkpoint: str) -> None:
    engine = LLMEngine.from_engine_args(EngineArgs(checkpoint, tensor_parallel_size=2, device="cpu",
                                                   max_model_len=128, num_gpu_blocks_override=64))
    executor = engine.engine_core.executor
    try:
        engine.add_request("r", {"prompt_token_ids": [5, 6, 7]}, SamplingParams(max_tokens=100, ignore_eos=True))
        for _ in range(3):
            engine.step()
        assert engine.has_unfinished_requests()
        os.kill(executor.procs[1].pid, signal.SIGKILL)
        start = time.monotonic()
        with pytest.raises(WorkerDiedError, match=r"died: rank 1 \(exit code -9\)"):
            for _ in range(200):
                engine.step()
        assert time.monotonic() - start < 15
        assert not any(p.is_alive() for p in executor.procs)  # the survivor was stopped too
        with pytest.raises(WorkerDiedError):
            engine.step()
    finally:
        engine.engine_core.shutdown()
