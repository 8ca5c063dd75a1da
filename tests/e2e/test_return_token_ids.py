"""vLLM's ``return_token_ids`` on the shared server: the prompt's and the choices' token ids,
whole and streamed, for completions (token-id and text prompts, n > 1, echo) and chat."""

from __future__ import annotations

import json
from typing import Any

import httpx
from e2e_helpers import MODEL_NAME

PROMPT_IDS = [0, 17, 23, 31, 42, 5]


def _events(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    return [json.loads(line[6:]) for line in resp.text.split("\n") if line.startswith("data: {")]


def _cmpl(http: httpx.Client, **patch: Any) -> httpx.Response:
    body = {"model": MODEL_NAME, "prompt": PROMPT_IDS, "max_tokens": 6, "temperature": 0.0, "ignore_eos": True,
            "return_token_ids": True}
    return http.post("/v1/completions", json={**body, **patch})


def test_completion_whole_and_streamed(http: httpx.Client) -> None:
    whole = _cmpl(http, n=2, temperature=1.0, seed=3).json()
    assert [c["prompt_token_ids"] for c in whole["choices"]] == [PROMPT_IDS, PROMPT_IDS]
    assert all(len(c["token_ids"]) == 6 for c in whole["choices"])
    assert whole["usage"]["completion_tokens"] == 12
    # the ids are the text's: detokenized they give it back
    for choice in whole["choices"]:
        detok = http.post("/detokenize", json={"model": MODEL_NAME, "tokens": choice["token_ids"]}).json()
        assert detok["prompt"] == choice["text"]

    events = _events(_cmpl(http, n=2, temperature=1.0, seed=3, stream=True))
    for index, choice in enumerate(whole["choices"]):
        chunks = [c for e in events for c in e["choices"] if c["index"] == index]
        assert chunks[0]["prompt_token_ids"] == PROMPT_IDS
        assert all("prompt_token_ids" not in c for c in chunks[1:])
        assert [t for c in chunks for t in c["token_ids"]] == choice["token_ids"]
        assert "".join(c["text"] for c in chunks) == choice["text"]


def test_completion_text_prompt_and_echo(http: httpx.Client) -> None:
    plain = _cmpl(http, prompt="Hello world", return_token_ids=None).json()["choices"][0]
    assert "token_ids" not in plain and "prompt_token_ids" not in plain
    choice = _cmpl(http, prompt="Hello world").json()["choices"][0]
    tokenized = http.post("/tokenize", json={"model": MODEL_NAME, "prompt": "Hello world"}).json()["tokens"]
    assert choice["prompt_token_ids"] == tokenized and choice["text"] == plain["text"]
    # As vLLM's: with the ids returned, echo leaves the prompt's text out (it is in
    # prompt_token_ids), while echo's logprobs still list the prompt's tokens first.
    echoed = _cmpl(http, prompt="Hello world", echo=True, logprobs=0).json()["choices"][0]
    assert echoed["text"] == plain["text"] and echoed["prompt_token_ids"] == tokenized
    offsets, tokens = echoed["logprobs"]["text_offset"], echoed["logprobs"]["tokens"]
    assert len(tokens) == len(tokenized) + 6
    assert all(b == a + len(t) for a, b, t in zip(offsets, offsets[1:], tokens))  # one running text


def test_chat_whole_and_streamed(http: httpx.Client) -> None:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6,
            "temperature": 0.0, "ignore_eos": True, "return_token_ids": True}
    whole = http.post("/v1/chat/completions", json=body).json()
    rendered = http.post("/tokenize", json={"model": MODEL_NAME, "messages": body["messages"]}).json()["tokens"]
    assert whole["prompt_token_ids"] == rendered
    choice = whole["choices"][0]
    assert len(choice["token_ids"]) == whole["usage"]["completion_tokens"] == 6
    events = _events(http.post("/v1/chat/completions", json={**body, "stream": True}))
    assert events[0]["prompt_token_ids"] == rendered and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("prompt_token_ids" not in e for e in events[1:])
    assert [t for e in events[1:] for c in e["choices"] for t in c["token_ids"]] == choice["token_ids"]
