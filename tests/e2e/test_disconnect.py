"""Clients that go away mid-request abort their requests at once: the KV blocks return to the
pool, nothing stays running, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from e2e_helpers import MODEL_NAME, metric_values

NUM_STREAMS = 24
NUM_NON_STREAMED = 4
LONG = {"model": MODEL_NAME, "max_tokens": 200, "ignore_eos": True, "temperature": 1.0}


async def _stream_then_leave(client: httpx.AsyncClient, i: int, chat: bool) -> bool:
    """Read until the first generated text arrives, then close the connection."""
    if chat:
        path, body = "/v1/chat/completions", {**LONG, "messages": [{"role": "user", "content": f"tell me {i}"}]}
    else:
        path, body = "/v1/completions", {**LONG, "prompt": f"Once upon a time {i}"}
    async with client.stream("POST", path, json={**body, "stream": True}) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[len("data: "):]).get("choices") or [{}]
            if choices[0].get("text") or (choices[0].get("delta") or {}).get("content"):
                return True  # leaving the block closes the connection mid-stream
    return False


async def _non_streamed_then_leave(client: httpx.AsyncClient, i: int) -> bool:
    """-> whether the request was still running when the client gave up (n = 16 sequences of
    200 tokens take seconds even on a fast machine; we leave after 0.3 s)."""
    body = {**LONG, "prompt": f"Far away {i}", "n": 16}
    try:
        await asyncio.wait_for(client.post("/v1/completions", json=body), timeout=0.3)
    except asyncio.TimeoutError:
        return True  # cancelled: httpx drops the connection
    return False


async def _disconnect_many(base_url: str, headers: dict[str, str]) -> tuple[list[bool], list[bool]]:
    # No keep-alive reuse: each request owns its connection, so leaving closes it.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60, limits=limits) as client:
        streams = [_stream_then_leave(client, i, chat=i % 2 == 1) for i in range(NUM_STREAMS)]
        others = [_non_streamed_then_leave(client, i) for i in range(NUM_NON_STREAMED)]
        results = await asyncio.gather(*streams, *others)
    return list(results[:NUM_STREAMS]), list(results[NUM_STREAMS:])


def _wait_idle(http: httpx.Client, timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        values = metric_values(http.get("/metrics").text)
        idle = (values["pagedlm:num_requests_running"] == 0 and values["pagedlm:num_requests_waiting"] == 0
                and values["pagedlm:kv_cache_usage_perc"] == 0)
        if idle or time.monotonic() > deadline:
            return values
        time.sleep(0.1)


def test_disconnects_free_everything(server, http: httpx.Client) -> None:
    before = metric_values(http.get("/metrics").text)
    got_text, left_early = asyncio.run(_disconnect_many(server.url, server.headers))
    assert all(got_text)
    assert any(left_early), "every non-streamed request finished before the client left: make them longer"
    # The abandoned requests (200 tokens each, 16 sequences for the non-streamed ones) would
    # keep the engine busy far longer than this if the aborts did not happen.
    values = _wait_idle(http, timeout=10.0)
    assert values["pagedlm:num_requests_running"] == 0
    assert values["pagedlm:num_requests_waiting"] == 0
    assert values["pagedlm:kv_cache_usage_perc"] == 0
    aborted = values['pagedlm:request_success_total{engine="0",finished_reason="abort",model_name="tiny"}']
    assert aborted - before['pagedlm:request_success_total{engine="0",finished_reason="abort",model_name="tiny"}'] == \
        NUM_STREAMS + sum(left_early)
    resp = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "still there?", "max_tokens": 4})
    assert resp.status_code == 200 and resp.json()["choices"][0]["finish_reason"] in ("length", "stop")
    assert http.get("/health").status_code == 200
