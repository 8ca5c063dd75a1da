"""The app in-process (starlette TestClient; the engine core is still its own process) for
what one shared server cannot show: no API key means open access, a model without a chat
template, and a dead engine core."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
from e2e_helpers import MAX_MODEL_LEN, metric_values
from fastapi.testclient import TestClient

from pagedlm.engine.async_llm import AsyncLLM
from pagedlm.engine_args import EngineArgs
from pagedlm.entrypoints.openai.api_server import build_app
from pagedlm.metrics import PrometheusStatLogger


def _make_client(checkpoint: Path, num_blocks: int = 64, **engine_kwargs) -> tuple[AsyncLLM, TestClient]:
    args = EngineArgs(model=str(checkpoint), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=num_blocks,
                      device="cpu", **engine_kwargs)
    engine = AsyncLLM.from_engine_args(args)
    engine.stat_logger = PrometheusStatLogger("inproc")  # its own registry: no clash with other apps
    return engine, TestClient(build_app(engine, engine.stat_logger, served_model_names=["inproc"]))


@pytest.fixture()
def app_client(checkpoint: Path) -> Iterator[tuple[AsyncLLM, TestClient]]:
    engine, client = _make_client(checkpoint)
    with client:  # runs the lifespan: starts and stops the engine thread
        yield engine, client


def test_no_api_key_means_open(app_client) -> None:
    _, client = app_client
    resp = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3})
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "inproc"
    values = metric_values(client.get("/metrics").text)
    assert values["pagedlm:generation_tokens_total"] >= 1


def test_model_without_chat_template(app_client) -> None:
    engine, client = app_client
    engine.tokenizer.chat_template = None
    resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 400
    assert "--chat-template" in resp.json()["error"]["message"]
    # completions still work
    assert client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2}).status_code == 200


def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_dead_engine(app_client) -> None:
    engine, client = app_client
    engine.client.processes[0].kill()
    _wait_for(lambda: client.get("/health").status_code == 503)
    resp = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3})
    assert resp.status_code == 500
    assert "engine core 0" in resp.json()["error"]["message"]
    # Later requests fail fast instead of hanging, streamed or not.
    assert client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 3}).status_code == 500
    assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                     "stream": True}).status_code == 500


def test_error_mid_stream(checkpoint: Path) -> None:
    engine, client = _make_client(checkpoint)
    with client:
        with client.stream("POST", "/v1/completions",
                           json={"prompt": "Hello", "max_tokens": 200, "ignore_eos": True, "stream": True}) as resp:
            assert resp.status_code == 200
            events = []
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
                    if len(events) == 3:
                        engine.client.processes[0].kill()
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == 500 and "exited unexpectedly" in error["message"]
        assert any("choices" in json.loads(e) for e in events[:-2])


def test_disable_fastapi_docs(app_client) -> None:
    engine, _ = app_client

    def paths(app) -> set:
        return {getattr(r, "path", None) for r in app.routes}

    assert {"/docs", "/openapi.json"} <= paths(build_app(engine))
    assert not {"/docs", "/redoc", "/openapi.json"} & paths(build_app(engine, disable_docs=True))


def test_add_special_tokens_reaches_the_tokenizer(app_client) -> None:
    from tokenizers.processors import TemplateProcessing

    engine, client = app_client
    # Make the demo tokenizer add BOS, as Llama 3's does, so the flag has something to switch.
    engine.tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", engine.tokenizer.bos_token_id)])

    def prompt_tokens(path: str, body: dict) -> int:
        resp = client.post(path, json={**body, "max_tokens": 1})
        assert resp.status_code == 200, resp.text
        return resp.json()["usage"]["prompt_tokens"]

    cmpl = {"prompt": "Hello world"}
    assert prompt_tokens("/v1/completions", {**cmpl, "add_special_tokens": False}) == prompt_tokens(
        "/v1/completions", cmpl) - 1
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert prompt_tokens("/v1/chat/completions", {**chat, "add_special_tokens": True}) == prompt_tokens(
        "/v1/chat/completions", chat) + 1
    count = [client.post("/tokenize", json={"prompt": "Hello world", **extra}).json()["count"]
             for extra in ({}, {"add_special_tokens": False})]
    assert count[1] == count[0] - 1


def test_priority_reaches_the_engine_core(checkpoint: Path) -> None:
    """With --scheduling-policy priority, a request's ``priority`` goes with every engine
    request it makes (completions, chat, and each of a beam search's); the scheduler's
    ordering is shown in tests/unit/test_priority_scheduling.py."""
    engine, client = _make_client(checkpoint, scheduling_policy="priority")
    sent: list[int] = []
    forward = engine.client.add_requests

    def record(requests):
        sent.extend(r.priority for r in requests)
        return forward(requests)

    engine.client.add_requests = record
    with client:
        body = {"max_tokens": 2, "temperature": 0.0}
        assert client.post("/v1/completions", json={"prompt": "Hello", "priority": -3, **body}).status_code == 200
        assert client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                         "priority": 4, **body}).status_code == 200
        assert [sent.pop(0), sent.pop(0)] == [-3, 4]
        resp = client.post("/v1/completions", json={"prompt": "Hello", "priority": 7, "use_beam_search": True,
                                                    "n": 2, **body})
        assert resp.status_code == 200, resp.text
        assert sent and set(sent) == {7}
        resp = client.post("/v1/completions", json={"prompt": "Hello", "priority": "high", **body})
        assert resp.status_code == 400
