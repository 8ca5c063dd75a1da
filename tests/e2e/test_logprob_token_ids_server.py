"""vLLM's ``logprob_token_ids`` on the shared server: each generated position's top_logprobs are
the sampled token and the listed ids, with the values an offline run gives, for completions
(whole and streamed) and chat; and vLLM's refusals."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from e2e_helpers import MODEL_NAME

from pagedlm import SamplingParams

PROMPT_IDS = [0, 17, 23, 31, 42, 5]
LISTED = [65, 66, 17]
MAX_TOKENS = 5


def _cmpl(http: httpx.Client, **patch: Any) -> httpx.Response:
    body = {"model": MODEL_NAME, "prompt": PROMPT_IDS, "max_tokens": MAX_TOKENS, "temperature": 0.0,
            "ignore_eos": True, "logprobs": 1, "logprob_token_ids": LISTED, "return_tokens_as_token_ids": True,
            "return_token_ids": True}
    return http.post("/v1/completions", json={**body, **patch})


def _chat(http: httpx.Client, **patch: Any) -> httpx.Response:
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": MAX_TOKENS,
            "temperature": 0.0, "ignore_eos": True, "logprobs": True, "logprob_token_ids": LISTED,
            "return_tokens_as_token_ids": True, "return_token_ids": True}
    return http.post("/v1/chat/completions", json={**body, **patch})


def _id(token: str) -> int:
    assert token.startswith("token_id:"), token
    return int(token.removeprefix("token_id:"))


@pytest.fixture(scope="module")
def offline(offline_llm):
    """The offline engine's logprobs for the same prompt: per position {token id: logprob}."""
    out = offline_llm.generate([{"prompt_token_ids": PROMPT_IDS}], SamplingParams(
        temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprob_token_ids=LISTED), use_tqdm=False)
    completion = out[0].outputs[0]
    return list(completion.token_ids), [{t: lp.logprob for t, lp in step.items()} for step in completion.logprobs]


def test_completions_values_match_offline(http: httpx.Client, offline) -> None:
    token_ids, steps = offline
    choice = _cmpl(http).json()["choices"][0]
    assert choice["token_ids"] == token_ids
    logprobs = choice["logprobs"]
    for i, (token, value, top) in enumerate(zip(logprobs["tokens"], logprobs["token_logprobs"],
                                                 logprobs["top_logprobs"])):
        assert _id(token) == token_ids[i]
        assert {_id(t) for t in top} == {token_ids[i], *LISTED}  # the sampled token and the listed ids
        assert value == pytest.approx(steps[i][token_ids[i]], abs=1e-4)
        for t, v in top.items():
            assert v == pytest.approx(steps[i][_id(t)], abs=1e-4)
    # streamed: the same entries, chunk by chunk
    events = [json.loads(line[6:]) for line in _cmpl(http, stream=True).text.split("\n") if line.startswith("data: {")]
    streamed = [top for e in events for c in e["choices"] if c.get("logprobs") for top in c["logprobs"]["top_logprobs"]]
    assert streamed == logprobs["top_logprobs"]


def test_chat_lists_the_ids_in_top_logprobs(http: httpx.Client, offline_llm) -> None:
    choice = _chat(http).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == MAX_TOKENS == len(choice["token_ids"])
    prompt = http.post("/tokenize", json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello"}]})
    out = offline_llm.generate([{"prompt_token_ids": prompt.json()["tokens"]}], SamplingParams(
        temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprob_token_ids=LISTED), use_tqdm=False)
    steps = out[0].outputs[0].logprobs
    for i, entry in enumerate(content):
        sampled = choice["token_ids"][i]
        assert _id(entry["token"]) == sampled
        assert entry["logprob"] == pytest.approx(steps[i][sampled].logprob, abs=1e-4)
        listed = {_id(t["token"]): t["logprob"] for t in entry["top_logprobs"]}
        assert set(listed) == {sampled, *LISTED}  # all of them, whatever top_logprobs says (vLLM's)
        for t, v in listed.items():
            assert v == pytest.approx(steps[i][t].logprob, abs=1e-4)
        ranks = [steps[i][t].rank for t in listed]
        assert ranks == sorted(ranks)  # most likely first


@pytest.mark.parametrize("patch, needle", [
    (dict(logprobs=None), "requires logprobs"),
    (dict(logprob_token_ids=[]), "logprob_token_ids"),
    (dict(use_beam_search=True, n=2), "beam search"),
    (dict(echo=True, max_tokens=0), "echo"),
    (dict(logprob_token_ids=[1, 10**6]), "outside the vocabulary"),
    (dict(logprob_token_ids=list(range(129))), "more than the 128"),
])
def test_completions_refusals(http: httpx.Client, patch: dict[str, Any], needle: str) -> None:
    resp = _cmpl(http, **patch)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]["message"]


@pytest.mark.parametrize("patch, needle", [
    (dict(logprobs=False), "requires logprobs"),
    (dict(use_beam_search=True, n=2), "beam search"),
])
def test_chat_refusals(http: httpx.Client, patch: dict[str, Any], needle: str) -> None:
    resp = _chat(http, **patch)
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["error"]["message"]
