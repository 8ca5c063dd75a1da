"""Pipeline parallelism keeps one batch per stage in flight (engine/batch_queue.py).

- The batch queue on one in-process rank equals the one-batch engine on the workload with
  chunked prefill, prefix caching and preemption; the batches in flight never share a
  request, and nothing leaks (no in-flight ids, every KV block free) at the end.
- Structured outputs under PP=2 with two batches in flight: every output follows its
  constraint (at temperature 1 on random weights only the mask can make it so).
- A worker killed while two batches are in flight fails the engine quickly and cleanly.
- The stages really overlap: the first stage runs ahead while the last one is stopped, and
  an output never waits for a batch launched after it.
- The start-up log names each stage's layers (with the structured-outputs engine).
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import time

import pytest

from pagedlm import LLM, EngineArgs, SamplingParams
from pagedlm.engine.batch_queue import BatchQueue
from pagedlm.engine.llm_engine import LLMEngine
from pagedlm.executor import serial
from pagedlm.executor.base import WorkerDiedError
from pagedlm.sampling_params import StructuredOutputsParams

from .parallel_helpers import ENGINE_KWARGS, assert_same, run_workload


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("pp_batches"), seed=5, num_key_value_heads=2))


def _watch_batches(core) -> list[list[set[str]]]:
    """Record, at every launch, the request ids of each batch then in flight."""
    seen: list[list[set[str]]] = []
    queue = core.batch_queue
    submit = queue.executor.submit

    def spy(sched):
        future = submit(sched)
        seen.append([set(s.num_scheduled_tokens) for s, _ in queue.queue] + [set(sched.num_scheduled_tokens)])
        return future

    queue.executor.submit = spy
    return seen


def test_batch_queue_on_one_rank_equals_one_batch_engine(checkpoint: str) -> None:
    reference = run_workload(LLM(checkpoint, **ENGINE_KWARGS))
    llm = LLM(checkpoint, **ENGINE_KWARGS)
    core = llm.llm_engine.engine_core
    core.batch_queue = BatchQueue(core.scheduler, core.executor, core.structured_output, 2)
    seen = _watch_batches(core)
    outputs = run_workload(llm)
    stats = core.stats()
    assert stats.num_preemptions_total > 0 and stats.prefix_cache_hits_total > 0
    assert core.batch_queue.max_depth_reached == 2
    for batches in seen:  # a request is never in two batches in flight at once
        assert sum(map(len, batches)) == len(set().union(*batches))
    assert not core.scheduler.inflight_req_ids and stats.num_free_blocks == stats.num_total_blocks
    assert_same(reference, outputs)


def test_start_up_warm_up_under_pp2(checkpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The warm-up's requests (engine/warm_up.py) run through the batch queue of two stages;
    then the core starts again from a fresh scheduler and batch queue: outputs as without it."""
    reference = run_workload(LLM(checkpoint, **ENGINE_KWARGS))
    monkeypatch.setenv("PAGEDLM_WARM_UP", "1")
    llm = LLM(checkpoint, pipeline_parallel_size=2, **ENGINE_KWARGS)
    core = llm.llm_engine.engine_core
    try:
        assert core.batch_queue.scheduler is core.scheduler and core.stats().num_steps_total == 0
        assert core.scheduler.finished_req_ids  # the warm-up's last requests, for the workers to drop
        assert_same(reference, run_workload(llm))
    finally:
        core.shutdown()


def _start_up_log(start) -> tuple[object, str]:
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("pagedlm.executor.base")
    logger.addHandler(handler)
    try:
        return start(), "\n".join(records)
    finally:
        logger.removeHandler(handler)


def test_structured_outputs_with_batches_in_flight(llama_checkpoint: str) -> None:
    pytest.importorskip("xgrammar")
    llm, log = _start_up_log(lambda: LLM(llama_checkpoint, pipeline_parallel_size=2, device="cpu", max_model_len=128,
                                         block_size=4, max_num_batched_tokens=16, num_gpu_blocks_override=128, seed=0))
    # The start-up log names the world layout: ranks, stages, their layers and KV blocks.
    assert "World of 2 rank(s), KV blocks per rank [128, 128] -> 128" in log
    assert "rank 0/2 (tp 0/1, pp 0/2)" in log and "layers [0, 1)" in log
    assert "rank 1/2 (tp 0/1, pp 1/2)" in log and "layers [1, 2)" in log
    try:
        regex = r"[0-9]{3}-[a-c]{1,6}"
        choices = ["yes", "no", "maybe later"]
        schema = {"type": "object", "properties": {"k": {"enum": ["cat", "dog"]}}, "required": ["k"],
                  "additionalProperties": False}
        params = [SamplingParams(temperature=1.0, max_tokens=40, structured_outputs=so) for so in (
            StructuredOutputsParams(regex=regex), StructuredOutputsParams(choice=choices),
            StructuredOutputsParams(json=schema, disable_any_whitespace=True))]
        # Compile the three grammars first (they are cached): every request is then ready at
        # once, so the token budget splits them over two batches whatever the box's load.
        llm.generate(["warm up"] * 3, [SamplingParams(max_tokens=2, structured_outputs=p.structured_outputs)
                                       for p in params], use_tqdm=False)
        batch_queue = llm.llm_engine.engine_core.batch_queue
        batch_queue.max_depth_reached = 0
        outputs = llm.generate([f"prompt number {i}" for i in range(9)], params * 3, use_tqdm=False)
        assert batch_queue.max_depth_reached == 2
    finally:
        llm.llm_engine.engine_core.shutdown()
    for i, out in enumerate(outputs):
        text = out.outputs[0].text
        assert out.error is None and out.outputs[0].finish_reason == "stop", (i, text)
        if i % 3 == 0:
            assert re.fullmatch(regex, text), text
        elif i % 3 == 1:
            assert text in choices
        else:
            assert json.loads(text)["k"] in ("cat", "dog")


def test_killed_worker_with_batches_in_flight(checkpoint: str) -> None:
    engine = LLMEngine.from_engine_args(EngineArgs(checkpoint, pipeline_parallel_size=2, device="cpu",
                                                   max_model_len=128, max_num_batched_tokens=16,
                                                   num_gpu_blocks_override=64))
    core = engine.engine_core
    try:
        for i in range(4):
            engine.add_request(str(i), {"prompt_token_ids": [5 + i] * 8},
                               SamplingParams(max_tokens=100, ignore_eos=True))
        submit, killed_at = core.executor.submit, []

        def submit_then_kill(sched):  # the last stage dies once a second batch is launched
            future = submit(sched)
            if len(core.batch_queue) == 1 and not killed_at:
                os.kill(core.executor.procs[1].pid, signal.SIGKILL)
                killed_at.append(time.monotonic())
            return future

        core.executor.submit = submit_then_kill
        with pytest.raises(WorkerDiedError, match=r"died: rank 1 \(exit code -9\)"):
            for _ in range(200):
                engine.step()
        assert killed_at and time.monotonic() - killed_at[0] < 15
        assert not any(p.is_alive() for p in core.executor.procs)
        with pytest.raises(WorkerDiedError):
            engine.step()
    finally:
        core.shutdown()


def test_stages_overlap_and_outputs_never_wait_for_later_batches(checkpoint: str) -> None:
    """Deterministic (a stopped process, no timing): (1) with the last stage stopped, the
    first stage still runs two launched batches and answers a command queued behind them,
    so it never waits for the last stage; (2) collecting an output sends the workers nothing
    (the output rank answers each step as soon as it is done), so an output can never queue
    behind a batch launched after it."""
    engine = LLMEngine.from_engine_args(EngineArgs(checkpoint, pipeline_parallel_size=2, device="cpu",
                                                   max_model_len=128, max_num_batched_tokens=16,
                                                   num_gpu_blocks_override=64))
    core, executor = engine.engine_core, engine.engine_core.executor
    queue, scheduler = core.batch_queue, core.scheduler
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    try:
        for i in range(4):
            engine.add_request(str(i), {"prompt_token_ids": [5 + i] * 8}, params)
        last = executor.procs[1].pid
        os.kill(last, signal.SIGSTOP)
        try:
            for _ in range(2):
                queue._submit(scheduler.schedule())
            assert [set(s.num_scheduled_tokens) for s, _ in queue.queue] == [{"0", "1"}, {"2", "3"}]
            executor._commands[0].send(serial.encode(["describe"]))  # to the first stage only
            assert "pp 0/2" in executor._wait({0})[0]
        finally:
            os.kill(last, signal.SIGCONT)
        sent: list[str] = []
        send = executor._send
        executor._send = lambda *msg: (sent.append(msg[0]), send(*msg))[1]
        assert [len(queue._collect()) for _ in range(2)] == [2, 2]  # each request's first token
        assert sent == []
        for _ in range(3):
            engine.step()
        assert sent == ["execute_model"] * 2  # one per launched batch, nothing to collect one
    finally:
        core.shutdown()
