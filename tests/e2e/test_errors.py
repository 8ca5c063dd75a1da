"""Every bad request gets its status and an OpenAI error envelope, and the server keeps serving
(no crash, no leaked KV blocks)."""

from __future__ import annotations

import json

import httpx
import pytest
from e2e_helpers import MAX_MODEL_LEN, MODEL_NAME, metric_values

CMPL = "/v1/completions"
CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]


def _c(**fields) -> dict:
    return {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 4, **fields}


def _chat(**fields) -> dict:
    return {"model": MODEL_NAME, "messages": MSGS, "max_tokens": 4, **fields}


# (id, path, body (dict or raw bytes), status, substring of the message, param or None)
CASES = [
    ("malformed-json", CMPL, b'{"prompt": "hi", ', 400, "not valid JSON", None),
    ("score-on-generative-model", "/v1/score", {"text_1": "a", "text_2": ["b"]}, 400, "embedding model", "model"),
    ("rerank-on-generative-model", "/rerank", {"query": "a", "documents": ["b"]}, 400, "embedding model", "model"),
    ("nan", CMPL, b'{"prompt": "hi", "temperature": NaN}', 400, "not valid JSON", None),
    ("infinite-float", CMPL, b'{"prompt": "hi", "logit_bias": {"5": 1e400}}', 400, "not valid JSON", None),
    ("logit-bias-range", CMPL, _c(logit_bias={"5": 101}), 400, "[-100, 100]", "logit_bias"),
    ("logit-bias-key", CMPL, _c(logit_bias={"abc": 1}), 400, "token ids", "logit_bias"),
    ("lone-surrogate", CMPL, b'{"prompt": "\\ud800 hi"}', 400, "not valid JSON", None),
    ("non-object", CMPL, b"[1, 2, 3]", 400, "must be a JSON object", None),
    ("string-body", CHAT, b'"hello"', 400, "must be a JSON object", None),
    ("missing-prompt", CMPL, {"model": MODEL_NAME}, 400, "prompt", "prompt"),
    ("wrong-type-temperature", CMPL, _c(temperature="hot"), 400, "temperature", "temperature"),
    ("wrong-type-max-tokens", CMPL, _c(max_tokens="many"), 400, "max_tokens", "max_tokens"),
    ("wrong-type-prompt", CMPL, _c(prompt={"a": 1}), 400, "prompt", "prompt"),
    ("mixed-prompt-list", CMPL, _c(prompt=["a", 1]), 400, "prompt", "prompt"),
    ("negative-temperature", CMPL, _c(temperature=-1), 400, "temperature", "temperature"),
    ("top-p-zero", CMPL, _c(top_p=0), 400, "top_p", "top_p"),
    ("presence-penalty", CMPL, _c(presence_penalty=3), 400, "presence_penalty", "presence_penalty"),
    ("n-zero", CMPL, _c(n=0), 400, "n", "n"),
    ("n-too-big", CMPL, _c(n=129), 400, "n", "n"),
    ("max-tokens-zero", CMPL, _c(max_tokens=0), 400, "max_tokens", "max_tokens"),
    ("logprobs-too-big", CMPL, _c(logprobs=21), 400, "logprobs", "logprobs"),
    ("top-logprobs-too-big", CHAT, _chat(logprobs=True, top_logprobs=21), 400, "top_logprobs", "top_logprobs"),
    ("top-logprobs-without-logprobs", CHAT, _chat(top_logprobs=2), 400, "logprobs", None),
    # -1 (the whole vocabulary, as vLLM): prompt_logprobs and chat top_logprobs pass the protocol and
    # meet the --max-logprobs cap (20 here); completions logprobs must be >= 0, as vLLM's protocol.
    ("logprobs-minus-one", CMPL, _c(logprobs=-1), 400, "greater than or equal to 0", "logprobs"),
    ("prompt-logprobs-minus-one-over-cap", CMPL, _c(prompt_logprobs=-1), 400, "--max-logprobs=20",
     "prompt_logprobs"),
    ("echo-prompt-logprobs-minus-one-over-cap", CMPL, _c(prompt_logprobs=-1, echo=True, logprobs=2), 400,
     "--max-logprobs=20", "prompt_logprobs"),
    ("chat-prompt-logprobs-minus-one-over-cap", CHAT, _chat(prompt_logprobs=-1), 400, "--max-logprobs=20",
     "prompt_logprobs"),
    ("top-logprobs-minus-one-over-cap", CHAT, _chat(logprobs=True, top_logprobs=-1), 400, "--max-logprobs=20",
     "top_logprobs"),
    ("top-logprobs-minus-one-without-logprobs", CHAT, _chat(top_logprobs=-1), 400, "logprobs", None),
    ("top-logprobs-minus-two", CHAT, _chat(logprobs=True, top_logprobs=-2), 400, "-1", "top_logprobs"),
    ("prompt-logprobs-minus-two", CMPL, _c(prompt_logprobs=-2), 400, "-1", "prompt_logprobs"),
    ("prompt-logprobs-with-stream", CMPL, _c(prompt_logprobs=2, stream=True), 400, "stream", "prompt_logprobs"),
    ("chat-prompt-logprobs-minus-one-with-stream", CHAT, _chat(prompt_logprobs=-1, stream=True), 400, "stream",
     "prompt_logprobs"),
    ("too-many-stops", CMPL, _c(stop=[f"s{i}" for i in range(65)]), 400, "stop", "stop"),
    ("empty-stop", CMPL, _c(stop=[""]), 400, "stop", "stop"),
    ("unknown-model", CMPL, _c(model="nope"), 404, "The model `nope` does not exist.", "model"),
    ("unknown-model-chat", CHAT, _chat(model="nope"), 404, "The model `nope` does not exist.", "model"),
    ("too-long", CMPL, _c(max_tokens=MAX_MODEL_LEN), 400, "maximum context length", "max_tokens"),
    ("prompt-too-long", CMPL, _c(prompt=[5] * MAX_MODEL_LEN, max_tokens=None), 400, "maximum context length",
     "prompt"),
    ("token-out-of-vocab", CMPL, _c(prompt=[1, 2, 10**6]), 400, "vocabulary", "prompt"),
    ("negative-token", CMPL, _c(prompt=[-1]), 400, "vocabulary", "prompt"),
    ("empty-prompt", CMPL, _c(prompt=""), 400, "empty", "prompt"),
    ("empty-prompt-list", CMPL, _c(prompt=[]), 400, "empty", "prompt"),
    ("empty-token-list", CMPL, _c(prompt=[[]]), 400, "empty", "prompt"),
    ("suffix", CMPL, _c(suffix="x"), 400, "suffix", "suffix"),
    ("stop-token-out-of-vocab", CMPL, _c(stop_token_ids=[10**6]), 400, "vocabulary", "stop_token_ids"),
    ("logit-bias-out-of-vocab", CMPL, _c(logit_bias={"999999": 1}), 400, "vocabulary", "logit_bias"),
    ("stream-options-without-stream", CMPL, _c(stream_options={"include_usage": True}), 400, "stream", None),
    ("response-format-unknown", CHAT, _chat(response_format={"type": "xml"}), 400, "not supported",
     "response_format"),
    ("guided-json-invalid", CHAT, _chat(guided_json={"type": "strnig"}), 400, "not a valid JSON schema",
     "guided_json"),
    ("guided-regex-invalid", CMPL, _c(guided_regex="a(b"), 400, "parenthesis", "guided_regex"),
    ("json-object-not-bool", CHAT, _chat(structured_outputs={"json_object": "yes"}), 400, "true or false",
     "structured_outputs"),
    ("disable-any-whitespace-not-bool", CMPL, _c(structured_outputs={"regex": "a+", "disable_any_whitespace": 1}),
     400, "true or false", "structured_outputs"),
    ("two-constraints", CHAT, _chat(response_format={"type": "json_object"}, guided_regex="a"), 400, "only one",
     "guided_regex"),
    ("tools-auto-without-parser", CHAT, _chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400,
     "--enable-auto-tool-choice", "tool_choice"),
    ("tool-choice-unknown-function", CHAT, _chat(tools=[{"type": "function", "function": {"name": "f"}}],
     tool_choice={"type": "function", "function": {"name": "g"}}), 400, "not in tools", "tool_choice"),
    ("tool-choice-function-not-object", CHAT, _chat(tools=[{"type": "function", "function": {"name": "f"}}],
     tool_choice={"type": "function", "function": "f"}), 400, "tool_choice must be", "tool_choice"),
    ("empty-messages", CHAT, _chat(messages=[]), 400, "messages", "messages"),
    ("bad-role", CHAT, _chat(messages=[{"role": 5, "content": "hi"}]), 400, "role", None),  # any string is a role
    ("image-content", CHAT, _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     400, "not supported", None),
    ("continue-and-generation-prompt", CHAT, _chat(continue_final_message=True), 400, "continue_final_message",
     None),
    ("request-chat-template", CHAT, _chat(chat_template="{{ 'x' }}"), 400, "chat_template", "chat_template"),
    ("beam-search-with-top-p", CMPL, _c(use_beam_search=True, top_p=0.5), 400, "cannot be combined", "top_p"),
    ("beam-search-with-guided-choice", CMPL, _c(use_beam_search=True, n=2, guided_choice=["yes", "no"]), 400,
     "structured output", "use_beam_search"),
    ("beam-search-with-json-object", CHAT, _chat(use_beam_search=True, n=2, response_format={"type": "json_object"}),
     400, "structured output", "use_beam_search"),
    ("truncate-beyond-max-model-len", CMPL, _c(truncate_prompt_tokens=10**6), 400, "truncate_prompt_tokens", None),
    ("responses-text-format-not-object", "/v1/responses", {"model": MODEL_NAME, "input": "hi", "max_output_tokens": 2,
     "text": {"format": "json_object"}}, 400, "text.format", "text.format"),
    ("top-k-beyond-int64", CMPL, _c(top_k=2**70), 400, "top_k", "top_k"),
    ("min-tokens-beyond-int64", CMPL, _c(min_tokens=2**70, max_tokens=None), 400, "min_tokens", "min_tokens"),
    ("priority-beyond-int64", CMPL, _c(priority=2**70), 400, "priority", "priority"),
    ("seed-type", CMPL, _c(seed="abc"), 400, "seed", "seed"),
    ("detokenize-out-of-vocab", "/detokenize", {"tokens": [10**7]}, 400, "vocabulary", "tokens"),
    ("tokenize-unknown-model", "/tokenize", {"model": "nope", "prompt": "x"}, 404, "does not exist", "model"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(http: httpx.Client, case: tuple) -> None:
    _, path, body, status, needle, param = case
    if isinstance(body, bytes):
        resp = http.post(path, content=body, headers={"content-type": "application/json"})
    else:
        resp = http.post(path, json=body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    assert needle.lower() in error["message"].lower(), error["message"]
    if param is not None:
        assert error["param"] == param, error


def test_body_too_large(http: httpx.Client) -> None:
    big = json.dumps(_c(prompt="x" * (9 * 1024 * 1024))).encode()
    resp = http.post(CMPL, content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == 413


def test_unknown_route_and_method(http: httpx.Client) -> None:
    resp = http.get("/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == 404
    resp = http.get(CMPL)
    assert resp.status_code == 405 and resp.json()["error"]["code"] == 405


def test_auth(server) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-key-123"}):
        resp = httpx.post(f"{server.url}{CMPL}", json=_c(), headers=headers)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == 401
    assert httpx.get(f"{server.url}/v1/models").status_code == 401


def test_server_still_serves_after_bad_requests(http: httpx.Client) -> None:
    for case in CASES:  # run them again, back to back, then check nothing leaked
        body = case[2]
        if isinstance(body, bytes):
            http.post(case[1], content=body)
        else:
            http.post(case[1], json=body)
    assert http.get("/health").status_code == 200
    resp = http.post(CMPL, json=_c(max_tokens=3, temperature=0.0))
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] >= 1
    values = metric_values(http.get("/metrics").text)
    assert values["pagedlm:num_requests_running"] == 0
    assert values["pagedlm:num_requests_waiting"] == 0
    assert values["pagedlm:kv_cache_usage_perc"] == 0
