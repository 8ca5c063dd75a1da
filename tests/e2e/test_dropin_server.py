"""A vLLM user's habits against a second server started with a vLLM-style launch line (about
twenty common flags, the API key from VLLM_API_KEY, vLLM's metric names)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from e2e_helpers import Server, metric_values, running_server

KEY = "vllm-env-key"
NAMES = ["tiny-a", "org/tiny-b"]


@pytest.fixture(scope="module")
def vllm_server(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    args = [
        "--model", str(checkpoint), "--served-model-name", *NAMES, "--max-model-len", "256", "--dtype", "auto",
        "--seed", "0", "--block-size", "16", "--max-num-seqs", "8", "--max-num-batched-tokens", "512",
        "--enable-prefix-caching", "--enable-chunked-prefill", "--trust-remote-code", "--disable-log-requests",
        "--disable-log-stats", "--swap-space", "8", "--max-logprobs", "6", "--uvicorn-log-level", "info",
        "--disable-uvicorn-access-log", "--metrics-prefix", "vllm", "--kv-cache-memory-bytes", "4000000",
        "--generation-config", "auto", "--tokenizer-mode", "auto", "--load-format", "auto", "--device", "cpu",
        "--gpu-memory-utilization", "0.9", "-tp", "1",
    ]
    env = {"VLLM_API_KEY": KEY, "PAGEDLM_API_KEY": ""}
    with running_server(args, tmp_path_factory.mktemp("vllm_server") / "server.log", env) as srv:
        yield srv


@pytest.fixture(scope="module")
def vclient(vllm_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=vllm_server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as c:
        yield c


def test_vllm_style_launch_line(vllm_server: Server, vclient: httpx.Client) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{vllm_server.url}/v1", api_key=KEY, max_retries=0, timeout=60)
    assert [m.id for m in client.models.list().data] == NAMES
    assert client.models.retrieve(NAMES[1]).id == NAMES[1]  # a name with a slash
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    for name in NAMES:  # every served name is accepted; the reply names the first (vLLM's models.model_name)
        out = client.completions.create(model=name, prompt="Hello", max_tokens=3)
        assert out.model == NAMES[0] and out.usage.completion_tokens == 3
    # --max-logprobs is enforced
    resp = vclient.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "logprobs": 7})
    assert resp.status_code == 400 and "--max-logprobs=6" in resp.json()["error"]["message"]
    # vLLM's metric names, the new families and process metrics
    text = vclient.get("/metrics").text
    values = metric_values(text)
    assert "pagedlm:" not in text
    for name in ("vllm:generation_tokens_total", "vllm:iteration_tokens_total_count",
                 "vllm:request_prefill_time_seconds_count", "vllm:request_decode_time_seconds_count",
                 "vllm:cache_config_info", "process_resident_memory_bytes", "python_info"):
        assert name in values, name
    assert values["vllm:iteration_tokens_total_count"] >= 1 and values["vllm:request_decode_time_seconds_count"] >= 2
    log = vllm_server.log_path.read_text()
    assert "--swap-space has no effect" in log and "--disable-log-requests has no effect" in log
    assert "Uvicorn running" not in log or "GET /metrics" not in log  # access log off


def test_api_key_from_vllm_env(vllm_server: Server) -> None:
    assert httpx.get(f"{vllm_server.url}/v1/models").status_code == 401
    wrong = httpx.get(f"{vllm_server.url}/v1/models", headers={"Authorization": "Bearer x"})
    assert wrong.status_code == 401


def test_client_gone_during_upload_logs_one_line(vllm_server: Server, vclient: httpx.Client) -> None:
    async def send_half() -> None:
        host, port = vllm_server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    asyncio.run(send_half())
    assert vclient.get("/health").status_code == 200  # the server still serves
    # The disconnect is noticed when the server next reads that request's body, which a busy
    # machine may schedule after the health check: wait for the line (bounded), not a fixed time.
    deadline = time.monotonic() + 30
    while "Client disconnected while sending the request body" not in (log := vllm_server.log_path.read_text()):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(0.05)
    assert "Traceback" not in log and "ERROR" not in log
