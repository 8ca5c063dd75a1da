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
from pagedlm.entrypoints.openai.api_server import HTTPOptions, build_app
from pagedlm.entrypoints.openai.tool_calling import ServingOptions
from pagedlm.metrics import PrometheusStatLogger


def _make_client(checkpoint: Path, num_blocks: int = 64, serving_options: ServingOptions | None = None,
                 http: HTTPOptions | None = None, api_key: str | None = None,
                 served_model_names: list[str] | None = None, **engine_kwargs) -> tuple[AsyncLLM, TestClient]:
    args = EngineArgs(model=str(checkpoint), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=num_blocks,
                      device="cpu", **engine_kwargs)
    engine = AsyncLLM.from_engine_args(args)
    engine.stat_logger = PrometheusStatLogger("inproc")  # its own registry: no clash with other apps
    return engine, TestClient(build_app(engine, engine.stat_logger, served_model_names=served_model_names or ["inproc"],
                                        serving_options=serving_options, http=http, api_key=api_key))


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


def test_response_model_is_the_first_served_name(checkpoint: Path) -> None:
    """As vLLM's: whichever served name a request uses, the response names the first one."""
    _, client = _make_client(checkpoint, served_model_names=["first", "second"])
    with client:
        for path, body in [("/v1/completions", {"prompt": "Hello"}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]})]:
            for model in ("second", None):
                resp = client.post(path, json={**body, "max_tokens": 1, **({"model": model} if model else {})})
                assert resp.status_code == 200, resp.text
                assert resp.json()["model"] == "first", (path, model)


def test_prompt_tokens_total_counts_every_sequence_of_n(app_client) -> None:
    """As vLLM: the prompt is prefilled once per sequence, so n = 2 counts it twice."""
    _, client = app_client
    resp = client.post("/v1/completions", json={"prompt": list(range(5, 15)), "max_tokens": 2, "n": 2})
    assert resp.status_code == 200, resp.text
    assert metric_values(client.get("/metrics").text)["pagedlm:prompt_tokens_total"] == 2 * 10


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


LOOPING_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{% for p in m['content'] %}[{{ p['text'] }}]{% endfor %}{% endfor %}"


@pytest.mark.parametrize("content_format,expected", [("auto", "<user>[a][b]"), ("openai", "<user>[a][b]"),
                                                     ("string", "<user>[][][]")])
def test_chat_template_content_format(checkpoint: Path, content_format: str, expected: str) -> None:
    """--chat-template-content-format: a template that loops over content parts gets them under
    auto and openai; forced to string it iterates the joined text's characters ("a\\nb")."""
    engine, client = _make_client(checkpoint, chat_template=LOOPING_TEMPLATE,
                                  serving_options=ServingOptions(chat_template_content_format=content_format))
    messages = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    with client:
        tokens = client.post("/tokenize", json={"messages": messages, "add_generation_prompt": False}).json()["tokens"]
        assert client.post("/detokenize", json={"tokens": tokens}).json()["prompt"] == expected
        resp = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 1})
        assert resp.status_code == 200 and resp.json()["usage"]["prompt_tokens"] == len(tokens)


def test_response_role(checkpoint: Path) -> None:
    """--response-role names the reply's role after a generation prompt, streamed or not;
    without one the reply continues the last message's role (vLLM)."""
    engine, client = _make_client(checkpoint, serving_options=ServingOptions(response_role="narrator"))
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with client:
        assert client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["role"] == "narrator"
        stream = client.post("/v1/chat/completions", json={**body, "stream": True}).text
        first = json.loads(next(line[6:] for line in stream.split("\n") if line.startswith("data: {")))
        assert first["choices"][0]["delta"]["role"] == "narrator"
        cont = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "he"}],
                "add_generation_prompt": False, "continue_final_message": True, "max_tokens": 2}
        assert client.post("/v1/chat/completions", json=cont).json()["choices"][0]["message"]["role"] == "assistant"



def test_max_logprobs_minus_one_is_no_cap_over_http(checkpoint: Path) -> None:
    """vllm serve --max-logprobs -1: logprobs / top_logprobs above 20, -1 (the whole vocabulary)
    and beam search of any width."""
    engine, client = _make_client(checkpoint, max_logprobs=-1)
    with client:
        resp = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2, "logprobs": 30,
                                                     "temperature": 0})
        assert resp.status_code == 200, resp.text
        tops = resp.json()["choices"][0]["logprobs"]["top_logprobs"]  # keyed by text: tokens may share one
        assert len(tops) == 2 and all(len(top) > 20 for top in tops)
        resp = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2, "n": 12,
                                                     "use_beam_search": True})
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["choices"]) == 12
        # -1 (vLLM's): the whole vocabulary, for prompt_logprobs and chat top_logprobs; a stream
        # still takes prompt_logprobs 0 only, and completions logprobs stays >= 0 (as vLLM's protocol).
        vocab = engine.model_config.vocab_size
        resp = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 1, "prompt_logprobs": -1,
                                                     "echo": True, "logprobs": 2})
        assert resp.status_code == 200, resp.text
        prompt_lps = resp.json()["choices"][0]["prompt_logprobs"]
        assert prompt_lps[0] is None and all(len(entry) == vocab for entry in prompt_lps[1:])
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": True,
                "top_logprobs": -1, "prompt_logprobs": -1}
        resp = client.post("/v1/chat/completions", json=chat)
        assert resp.status_code == 200, resp.text
        assert [len(c["top_logprobs"]) for c in resp.json()["choices"][0]["logprobs"]["content"]] == [vocab, vocab]
        assert all(len(entry) == vocab for entry in resp.json()["prompt_logprobs"][1:])
        chunks = [json.loads(line[6:]) for line in client.post("/v1/chat/completions", json={
            **chat, "prompt_logprobs": 0, "stream": True}).text.splitlines() if line.startswith("data: {")]
        streamed = [c for chunk in chunks for ch in chunk["choices"] if ch["logprobs"] for c in ch["logprobs"]["content"]]
        assert [len(c["top_logprobs"]) for c in streamed] == [vocab, vocab]
        assert client.post("/v1/chat/completions", json={**chat, "stream": True}).status_code == 400
        assert client.post("/v1/completions", json={"prompt": "Hello", "logprobs": -1}).status_code == 400


def test_cors_root_path_and_request_ids(checkpoint: Path) -> None:
    """--allowed-origins (and methods, headers), --enable-request-id-headers, and the API key's
    open paths behind a --root-path (uvicorn sets the ASGI root_path; the test client here)."""
    http = HTTPOptions(allowed_origins=("https://ui.example",), allow_credentials=True, allowed_methods=("POST",),
                       allowed_headers=("authorization", "content-type"), request_id_headers=True)
    engine, client = _make_client(checkpoint, http=http, api_key="k")
    client = TestClient(client.app, root_path="/api")
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    with client:
        # A browser's preflight is answered without the API key, for the allowed origin only.
        ok = client.options("/v1/completions", headers={"Origin": "https://ui.example", **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://ui.example"
        assert ok.headers["access-control-allow-credentials"] == "true"
        assert client.options("/v1/completions", headers={"Origin": "https://evil.example", **preflight}).status_code == 400
        for bad in ({"Access-Control-Request-Method": "DELETE"}, {"Access-Control-Request-Headers": "x-other"}):
            resp = client.options("/v1/completions", headers={"Origin": "https://ui.example", **preflight, **bad})
            assert resp.status_code == 400, bad
        resp = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2},
                           headers={"Authorization": "Bearer k", "Origin": "https://ui.example", "X-Request-Id": "abc"})
        assert resp.status_code == 200 and resp.headers["x-request-id"] == "abc"
        assert resp.headers["access-control-allow-origin"] == "https://ui.example"
        health = client.get("/health")  # open, and given a fresh request id
        assert health.status_code == 200 and len(health.headers["x-request-id"]) == 32
        assert client.get("/api/health").status_code == 200  # a proxy that keeps the prefix
        assert client.get("/api/v1/models").status_code == 401  # the prefix opens nothing else
        assert client.get("/openapi.json", headers={"Authorization": "Bearer k"}).json()["servers"] == [{"url": "/api"}]
    engine, client = _make_client(checkpoint)  # vLLM's defaults: every origin, no request ids
    with client:
        resp = client.get("/health", headers={"Origin": "https://any.example"})
        assert resp.headers["access-control-allow-origin"] == "*" and "x-request-id" not in resp.headers


def test_force_include_usage_and_tokens_as_token_ids(checkpoint: Path) -> None:
    """--enable-force-include-usage: streams end with usage unasked. --return-tokens-as-token-ids:
    logprobs name every token (sampled and alternatives) "token_id:N"."""
    options = ServingOptions(force_include_usage=True, return_tokens_as_token_ids=True)
    engine, client = _make_client(checkpoint, serving_options=options)
    with client:
        stream = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3, "stream": True}).text
        events = [json.loads(line[6:]) for line in stream.split("\n") if line.startswith("data: {")]
        assert events[-1]["usage"]["completion_tokens"] == 3
        body = client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3, "logprobs": 2,
                                                    "temperature": 0.0}).json()
        lps = body["choices"][0]["logprobs"]
        assert all(t.startswith("token_id:") for t in lps["tokens"]) and len(lps["tokens"]) == 3
        assert all(k.startswith("token_id:") for top in lps["top_logprobs"] for k in top)
        # Greedy: each sampled token is its position's most likely one, under the same name.
        assert all(max(top, key=top.get) == tok for tok, top in zip(lps["tokens"], lps["top_logprobs"]))
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                         "max_tokens": 2, "logprobs": True, "top_logprobs": 2}).json()
        content = chat["choices"][0]["logprobs"]["content"]
        assert all(c["token"].startswith("token_id:") and c["bytes"] == list(c["token"].encode()) for c in content)
        assert all(t["token"].startswith("token_id:") for c in content for t in c["top_logprobs"])


def test_streamed_echo_logprobs_of_a_chunked_prompt(checkpoint: Path) -> None:
    """A prompt prefilled over several steps (chunked prefill): a stream's echoed prompt carries
    the logprobs of every prompt position, as the full response does (only the first has none)."""
    engine, client = _make_client(checkpoint, max_num_batched_tokens=16)
    body = {"prompt": list(range(10, 60)), "max_tokens": 2, "echo": True, "logprobs": 1, "temperature": 0.0}
    with client:
        full = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["token_logprobs"]
        stream = client.post("/v1/completions", json={**body, "stream": True}).text
    events = [json.loads(line[6:]) for line in stream.split("\n") if line.startswith("data: {")]
    streamed = [lp for e in events for c in e["choices"] for lp in c["logprobs"]["token_logprobs"]]
    assert len(streamed) == len(full) == 52
    assert streamed[0] is None and None not in streamed[1:]
    assert streamed[:50] == full[:50]


def test_request_the_core_never_got_is_forgotten(checkpoint: Path) -> None:
    """A request that could not be handed to the engine core (here: sending fails) leaves no
    stream behind: it would never end, and a shutdown would wait its whole grace period for it."""
    engine, client = _make_client(checkpoint)

    def fail(requests):
        raise OverflowError("can't serialize ints > 2**64 - 1")

    client = TestClient(client.app, raise_server_exceptions=False)  # the 500 a server answers with
    with client:
        forward, engine.client.add_requests = engine.client.add_requests, fail
        assert client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2}).status_code == 500
        engine.client.add_requests = forward
        assert engine.num_unfinished_requests == 0
        assert client.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2}).status_code == 200


def test_vllm_style_async_engine_script(checkpoint: Path) -> None:
    """vLLM's async offline script, the import swapped: AsyncLLMEngine.from_engine_args(AsyncEngineArgs)
    and generate(prompt, params, request_id) with no start() call first."""
    import asyncio

    from pagedlm import AsyncEngineArgs, AsyncLLMEngine, SamplingParams

    async def main():
        engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(
            model=str(checkpoint), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=64, device="cpu"))
        try:
            outputs = [out async for out in engine.generate("Hello", SamplingParams(max_tokens=4, temperature=0),
                                                             "req-0")]
        finally:
            engine.shutdown()
        return outputs

    outputs = asyncio.run(asyncio.wait_for(main(), 120))
    assert outputs[-1].finished and len(outputs[-1].outputs[0].token_ids) == 4
