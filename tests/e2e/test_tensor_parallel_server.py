"""``pagedlm serve --tensor-parallel-size 2`` (two worker processes, gloo): completions and
chat, streamed and not, equal the single-rank offline engine; then a worker killed in the
middle of a stream ends that stream with an error and the server exits (its engine is
dead), within a bounded time, leaving no worker process behind; and a killed engine core
leaves no worker behind either."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import pytest
from e2e_helpers import (
    API_KEY,
    MAX_MODEL_LEN,
    MODEL_NAME,
    NUM_BLOCKS,
    Server,
    alive,
    core_pids,
    private_tmpdir,
    running_server,
    sockets_dirs,
    wait_until,
    worker_pids,
)

from pagedlm import SamplingParams

PROMPTS = ["Hello, my name is", "The capital of France is"]


def _tp_args(checkpoint: Path) -> list[str]:
    return [str(checkpoint), "--served-model-name", MODEL_NAME, "--max-model-len", str(MAX_MODEL_LEN),
            "--num-gpu-blocks-override", str(NUM_BLOCKS), "--device", "cpu", "--api-key", API_KEY,
            "--tensor-parallel-size", "2"]


@pytest.fixture(scope="module")
def tp_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(_tp_args(checkpoint), tmp_path_factory.mktemp("tp_server") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def tp_client(tp_server: Server):
    import openai

    return openai.OpenAI(base_url=f"{tp_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_layout_logged(tp_server: Server) -> None:
    log = tp_server.log_path.read_text(errors="replace")
    assert "World of 2 rank(s)" in log and "rank 1/2 (tp 1/2, pp 0/1)" in log


def test_completions_match_single_rank(tp_client, offline_llm) -> None:
    expected = offline_llm.generate(PROMPTS, SamplingParams(temperature=0.0, max_tokens=12), use_tqdm=False)
    resp = tp_client.completions.create(model=MODEL_NAME, prompt=PROMPTS, temperature=0.0, max_tokens=12)
    assert [c.text for c in resp.choices] == [e.outputs[0].text for e in expected]
    stream = tp_client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], temperature=0.0, max_tokens=12,
                                          stream=True)
    assert "".join(c.choices[0].text for c in stream) == expected[0].outputs[0].text


def test_chat(tp_client) -> None:
    messages = [{"role": "user", "content": "Name a color."}]
    resp = tp_client.chat.completions.create(model=MODEL_NAME, messages=messages, temperature=0.0, max_tokens=8)
    assert resp.choices[0].message.role == "assistant" and resp.usage.completion_tokens > 0


def test_killed_worker_fails_stream_and_health(tp_server: Server, tp_client) -> None:
    import openai

    workers = worker_pids(tp_server.proc.pid)
    assert len(workers) == 2
    stream = tp_client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=MAX_MODEL_LEN - 16,
                                          stream=True, extra_body={"ignore_eos": True})
    start = None
    with pytest.raises(openai.APIError):
        for _ in stream:
            if start is None:
                os.kill(workers[1], signal.SIGKILL)
                start = time.monotonic()
    assert time.monotonic() - start < 20
    # The engine is dead: the server exits with an error, naming the rank that died, and
    # leaves no worker behind.
    tp_server.proc.wait(timeout=30)
    assert tp_server.proc.returncode != 0
    assert "worker process(es) died: rank 1" in tp_server.log_tail(300)
    assert wait_until(lambda: not any(alive(pid) for pid in workers), timeout=20.0)


def test_killed_core_leaves_no_worker(checkpoint: Path, tmp_path: Path) -> None:
    """The workers' OS parent is the core's forkserver, which a SIGKILLed core leaves running
    (the workers hold its liveness pipe): they must notice the core itself is gone."""
    with running_server(_tp_args(checkpoint), tmp_path / "server.log", private_tmpdir(tmp_path)) as srv:
        [core] = core_pids(srv.proc.pid)
        workers = worker_pids(srv.proc.pid)
        assert len(workers) == 2
        assert len(sockets_dirs(tmp_path)) == 2  # the server's to its core, the core's to its workers
        os.kill(core, signal.SIGKILL)
        try:
            assert wait_until(lambda: not any(alive(pid) for pid in workers), timeout=10.0)
        finally:  # a failure here leaves no process behind either
            for pid in filter(alive, workers):
                os.kill(pid, signal.SIGKILL)
        srv.proc.wait(timeout=30)
        assert srv.proc.returncode != 0
        assert sockets_dirs(tmp_path) == []  # the workers removed their dead core's sockets
