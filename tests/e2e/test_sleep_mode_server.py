"""vLLM's sleep-mode endpoints (POST /sleep, POST /wake_up, GET /is_sleeping): only in server
dev mode (PAGEDLM_SERVER_DEV_MODE / VLLM_SERVER_DEV_MODE), as vLLM's. The app in-process
(TestClient); the engine core is its own process, so sleep / wake_up / is_sleeping travel as
engine-core utility calls."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from e2e_helpers import MAX_MODEL_LEN
from fastapi.testclient import TestClient

from pagedlm.engine.async_llm import AsyncLLM
from pagedlm.engine_args import EngineArgs
from pagedlm.entrypoints.openai.api_server import build_app
from pagedlm.metrics import PrometheusStatLogger

BODY = {"prompt": "The quick brown fox", "max_tokens": 6, "temperature": 0}


def _app(engine: AsyncLLM):
    return build_app(engine, PrometheusStatLogger("sleep"), served_model_names=["sleep"])


@pytest.fixture(scope="module")
def dev_client(checkpoint: Path) -> Iterator[tuple[AsyncLLM, TestClient]]:
    args = EngineArgs(model=str(checkpoint), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=64, device="cpu",
                      enable_sleep_mode=True)
    engine = AsyncLLM.from_engine_args(args)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_SERVER_DEV_MODE", "1")
        app = _app(engine)
    with TestClient(app) as client:
        yield engine, client


def test_routes_need_dev_mode(dev_client, monkeypatch) -> None:
    engine, _ = dev_client
    for var in ("PAGEDLM_SERVER_DEV_MODE", "VLLM_SERVER_DEV_MODE"):
        monkeypatch.delenv(var, raising=False)
    plain = TestClient(_app(engine))  # not entered: no lifespan, the engine is the fixture's
    assert plain.post("/sleep", params={"level": 1}).status_code == 404
    assert plain.post("/wake_up").status_code == 404
    assert plain.get("/is_sleeping").status_code == 404
    monkeypatch.setenv("PAGEDLM_SERVER_DEV_MODE", "1")
    assert any(getattr(r, "path", None) == "/is_sleeping" for r in _app(engine).routes)


def test_sleep_wake_round_trip(dev_client) -> None:
    _, client = dev_client
    before = client.post("/v1/completions", json=BODY)
    assert before.status_code == 200, before.text
    assert client.get("/is_sleeping").json() == {"is_sleeping": False}
    assert client.post("/sleep", params={"level": 1}).status_code == 200
    assert client.get("/is_sleeping").json() == {"is_sleeping": True}
    refused = client.post("/v1/completions", json=BODY)
    assert refused.status_code == 503 and "sleeping" in refused.text
    assert client.post("/wake_up", params={"tags": ["weights"]}).status_code == 200
    assert client.get("/is_sleeping").json() == {"is_sleeping": True}  # the KV cache still sleeps
    assert client.post("/wake_up", params={"tags": ["kv_cache"]}).status_code == 200
    assert client.get("/is_sleeping").json() == {"is_sleeping": False}
    after = client.post("/v1/completions", json=BODY)
    assert after.status_code == 200, after.text
    assert after.json()["choices"][0]["text"] == before.json()["choices"][0]["text"]


def test_bad_level_is_a_client_error(dev_client) -> None:
    _, client = dev_client
    resp = client.post("/sleep", params={"level": 5})
    assert resp.status_code == 400 and "level" in resp.text
    assert client.get("/is_sleeping").json() == {"is_sleeping": False}
