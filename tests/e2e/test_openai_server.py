"""The server through the official openai client: completions and chat, streamed and not,
parity with the offline LLM, n > 1, logprobs, stop, seed, usage, tokenize, metrics."""

from __future__ import annotations

import asyncio
import math

import pytest
from e2e_helpers import MAX_MODEL_LEN, MODEL_NAME, metric_values

from pagedlm import SamplingParams

PROMPTS = ["Hello, my name is", "The capital of France is", "def add(a, b):"]
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}]


def test_models_and_version(client, http) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    assert models[0].model_extra["max_model_len"] == MAX_MODEL_LEN
    assert http.get("/version").json()["version"]
    assert http.get("/health").status_code == 200


def test_greedy_completions_match_offline(client, offline_llm) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=12)
    expected = [o.outputs[0] for o in offline_llm.generate(PROMPTS, params, use_tqdm=False)]
    resp = client.completions.create(model=MODEL_NAME, prompt=PROMPTS, temperature=0.0, max_tokens=12)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert [c.text for c in resp.choices] == [e.text for e in expected]
    assert [c.finish_reason for c in resp.choices] == [e.finish_reason for e in expected]
    assert resp.usage.completion_tokens == sum(len(e.token_ids) for e in expected)
    assert resp.usage.prompt_tokens == sum(len(offline_llm.get_tokenizer().encode(p)) for p in PROMPTS)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens_details.cached_tokens is not None
    # Token-id prompts are accepted and give the same text.
    ids = offline_llm.get_tokenizer().encode(PROMPTS[0])
    by_ids = client.completions.create(model=MODEL_NAME, prompt=ids, temperature=0.0, max_tokens=12)
    assert by_ids.choices[0].text == expected[0].text


def test_greedy_chat_matches_offline(client, offline_llm) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=12)
    expected = offline_llm.chat(MESSAGES, params, use_tqdm=False)[0].outputs[0]
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, temperature=0.0, max_tokens=12)
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert resp.usage.completion_tokens == len(expected.token_ids)


def test_streamed_completion_equals_full(client) -> None:
    kwargs = dict(model=MODEL_NAME, prompt=PROMPTS[1], temperature=0.0, max_tokens=10)
    full = client.completions.create(**kwargs)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert "".join(c.choices[0].text for c in text_chunks) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in text_chunks][-1] == full.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in text_chunks[:-1])
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in text_chunks)


def test_streamed_chat(client) -> None:
    kwargs = dict(model=MODEL_NAME, messages=MESSAGES, temperature=0.0, max_tokens=10)
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == full.choices[0].finish_reason and all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens


def test_n_choices_streamed_and_seeded(client) -> None:
    kwargs = dict(model=MODEL_NAME, prompt=PROMPTS[0], temperature=1.0, max_tokens=8, n=3, seed=11)
    full = client.completions.create(**kwargs)
    assert sorted(c.index for c in full.choices) == [0, 1, 2]
    assert 3 <= full.usage.completion_tokens <= 24
    texts: dict[int, str] = {0: "", 1: "", 2: ""}
    finished: dict[int, str | None] = {}
    for chunk in client.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            assert choice.index not in finished, "a chunk after the choice's finish_reason"
            texts[choice.index] += choice.text
            if choice.finish_reason is not None:
                finished[choice.index] = choice.finish_reason
    assert sorted(finished) == [0, 1, 2]
    assert texts == {c.index: c.text for c in full.choices}  # same seed, same output
    chat = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, n=2, max_tokens=4, seed=3)
    assert sorted(c.index for c in chat.choices) == [0, 1]


def test_seed_reproducibility(client) -> None:
    kwargs = dict(model=MODEL_NAME, prompt=PROMPTS[2], temperature=1.0, max_tokens=12)
    first = client.completions.create(seed=1234, **kwargs).choices[0].text
    assert client.completions.create(seed=1234, **kwargs).choices[0].text == first
    others = {client.completions.create(seed=s, **kwargs).choices[0].text for s in (1, 2, 3)}
    assert len(others | {first}) > 1, "different seeds should give different samples"


def test_completion_logprobs_and_echo(client, offline_llm) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=3)
    expected = offline_llm.generate([PROMPTS[0]], params, use_tqdm=False)[0].outputs[0]
    resp = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], temperature=0.0, max_tokens=6, logprobs=3)
    lp = resp.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    for token, top, token_lp, ref, tid in zip(lp.tokens, lp.top_logprobs, lp.token_logprobs, expected.logprobs,
                                              expected.token_ids):
        # The sampled token plus the top 3, keyed by text (distinct ids with the same text collapse).
        assert token in top and len(top) <= 4
        assert len(top) == len({ref_lp.decoded_token for ref_lp in ref.values()})
        assert math.isclose(token_lp, ref[tid].logprob, abs_tol=1e-3)
        assert token_lp >= max(top.values()) - 1e-4  # greedy: the sampled token is the most likely
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    echo = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], temperature=0.0, max_tokens=6,
                                     logprobs=2, echo=True)
    choice = echo.choices[0]
    assert choice.text == PROMPTS[0] + resp.choices[0].text
    num_prompt = echo.usage.prompt_tokens
    assert choice.logprobs.token_logprobs[0] is None
    assert len(choice.logprobs.tokens) == num_prompt + 6
    assert choice.logprobs.text_offset[num_prompt] == len(PROMPTS[0])


def test_echo_without_generation(client, offline_llm) -> None:
    """echo with max_tokens 0 (lm-eval's loglikelihood requests): the prompt alone with its logprobs."""
    kwargs = dict(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=0, echo=True, logprobs=1)
    choice = client.completions.create(**kwargs).choices[0]
    num_prompt = len(offline_llm.get_tokenizer().encode(PROMPTS[0]))
    assert choice.text == PROMPTS[0]
    assert len(choice.logprobs.tokens) == num_prompt and choice.logprobs.token_logprobs[0] is None
    assert all(lp is not None for lp in choice.logprobs.token_logprobs[1:])
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **kwargs) if c.choices]
    assert "".join(c.text for c in chunks) == PROMPTS[0]
    assert sum(len(c.logprobs.tokens) for c in chunks) == num_prompt
    assert chunks[-1].finish_reason is not None


def test_null_n_and_echo(http) -> None:
    """OpenAI's API takes null for n and completions' echo (their defaults), as clients that pass
    every keyword send them."""
    chat = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 2,
                                                   "n": None})
    assert chat.status_code == 200, chat.text
    assert len(chat.json()["choices"]) == 1
    cmpl = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": PROMPTS[0], "max_tokens": 2, "n": None,
                                              "echo": None})
    assert cmpl.status_code == 200, cmpl.text
    assert len(cmpl.json()["choices"]) == 1 and not cmpl.json()["choices"][0]["text"].startswith(PROMPTS[0])


def test_chat_logprobs(client) -> None:
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, temperature=0.0, max_tokens=5,
                                          logprobs=True, top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for entry in content:
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
        assert math.isclose(entry.logprob, entry.top_logprobs[0].logprob, abs_tol=1e-4)  # greedy
        assert entry.bytes == list(entry.token.encode("utf-8"))
    streamed = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, temperature=0.0, max_tokens=5,
                                              logprobs=True, top_logprobs=2, stream=True)
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert tokens == [e.token for e in content]


def test_stop_strings(client) -> None:
    kwargs = dict(model=MODEL_NAME, prompt=PROMPTS[1], temperature=0.0, max_tokens=16, extra_body={"ignore_eos": True})
    text = client.completions.create(**kwargs).choices[0].text
    stop = next(text[i:i + 2] for i in range(3, len(text) - 2) if text[i:i + 2].strip() and "\ufffd" not in text[i:i + 2])
    cut = client.completions.create(stop=[stop, "never-appears"], **kwargs)
    choice = cut.choices[0]
    assert choice.text == text[: text.index(stop)]
    assert choice.finish_reason == "stop" and choice.model_extra["stop_reason"] == stop
    streamed = "".join(c.choices[0].text for c in client.completions.create(stop=stop, stream=True, **kwargs))
    assert streamed == choice.text
    kept = client.completions.create(stop=stop, extra_body={"ignore_eos": True, "include_stop_str_in_output": True},
                                     **{k: v for k, v in kwargs.items() if k != "extra_body"})
    assert kept.choices[0].text == text[: text.index(stop) + len(stop)]


def test_extra_sampling_fields_and_default_max_tokens(client, offline_llm) -> None:
    resp = client.completions.create(
        model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=5,
        extra_body={"top_k": 5, "min_p": 0.01, "repetition_penalty": 1.1, "min_tokens": 5, "ignore_eos": True,
                    "skip_special_tokens": True, "seed": 5},
    )
    assert resp.usage.completion_tokens == 5
    # Without max_tokens a completion stops at 16 tokens (OpenAI's and vLLM's default; chat has none).
    default = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], extra_body={"ignore_eos": True})
    assert default.usage.completion_tokens == 16 and default.choices[0].finish_reason == "length"
    # With max_tokens null the request may use the rest of the context.
    long_prompt = offline_llm.get_tokenizer().encode("one two three " * 200)[: MAX_MODEL_LEN - 6]
    rest = client.completions.create(model=MODEL_NAME, prompt=long_prompt, max_tokens=None,
                                     extra_body={"ignore_eos": True})
    assert rest.usage.completion_tokens == 6 and rest.choices[0].finish_reason == "length"


def test_tokenize_detokenize(http, offline_llm) -> None:
    tok = offline_llm.get_tokenizer()
    body = http.post("/tokenize", json={"model": MODEL_NAME, "prompt": PROMPTS[0]}).json()
    assert body["tokens"] == tok.encode(PROMPTS[0]) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == MAX_MODEL_LEN
    assert http.post("/detokenize", json={"model": MODEL_NAME, "tokens": body["tokens"]}).json() == {"prompt": PROMPTS[0]}
    chat = http.post("/tokenize", json={"messages": MESSAGES}).json()
    assert chat["count"] > body["count"]


def test_concurrent_requests(async_client_factory) -> None:
    async def run() -> list:
        async with async_client_factory() as aclient:
            coros = [aclient.completions.create(model=MODEL_NAME, prompt=f"{p} {i}", max_tokens=6, temperature=0.0)
                     for i, p in enumerate(PROMPTS * 6)]
            return await asyncio.gather(*coros)

    results = asyncio.run(run())
    assert len(results) == 18 and all(r.usage.completion_tokens >= 1 for r in results)


def test_metrics(http, client) -> None:
    client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=3)
    text = http.get("/metrics").text
    values = metric_values(text)
    for name in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert f"pagedlm:{name}" in values
    for name in ("prompt_tokens_total", "generation_tokens_total", "request_success_total", "num_preemptions_total",
                 "prefix_cache_queries_total", "prefix_cache_hits_total"):
        assert f"pagedlm:{name}" in values, name
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds",
                 "request_queue_time_seconds"):
        assert values[f"pagedlm:{name}_count"] > 0, name
    assert values["pagedlm:generation_tokens_total"] >= 3
    assert values['pagedlm:request_success_total{engine="0",finished_reason="length",model_name="tiny"}'] >= 1


def test_metrics_count_each_sequence_of_an_n_request(http, client) -> None:
    """As vLLM (a request state per sequence): n = 3 finishes three requests, with three
    TTFTs, e2e latencies and generation-token counts of 4 each."""
    success = 'pagedlm:request_success_total{engine="0",finished_reason="length",model_name="tiny"}'
    names = (success, "pagedlm:time_to_first_token_seconds_count", "pagedlm:e2e_request_latency_seconds_count",
             "pagedlm:request_generation_tokens_count", "pagedlm:request_generation_tokens_sum",
             "pagedlm:inter_token_latency_seconds_count")
    before = metric_values(http.get("/metrics").text)
    client.completions.create(model=MODEL_NAME, prompt=PROMPTS[1], max_tokens=4, n=3, temperature=1.0, seed=3,
                              extra_body={"ignore_eos": True})
    after = metric_values(http.get("/metrics").text)
    delta = [after[name] - before.get(name, 0) for name in names]
    assert delta == [3, 3, 3, 3, 12, 9]


@pytest.mark.parametrize("path", ["/health", "/metrics", "/version"])
def test_open_paths_need_no_key(server, path) -> None:
    import httpx

    assert httpx.get(f"{server.url}{path}").status_code == 200


def test_x_request_id_header_names_the_response(http) -> None:
    """As vLLM's: the X-Request-Id header names the response, over the body's request_id; a
    repeated id is fine (the engine's own ids stay unique); an over-long one is a 400."""
    completion = {"model": MODEL_NAME, "prompt": PROMPTS[0], "max_tokens": 2}
    for _ in range(2):
        resp = http.post("/v1/completions", json=completion, headers={"X-Request-Id": "hdr-1"})
        assert resp.status_code == 200 and resp.json()["id"] == "cmpl-hdr-1"
    chat = {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 2, "request_id": "in-body"}
    assert http.post("/v1/chat/completions", json=chat).json()["id"] == "chatcmpl-in-body"
    assert http.post("/v1/chat/completions", json=chat, headers={"X-Request-Id": "hdr-2"}).json()["id"] == \
        "chatcmpl-hdr-2"
    long = http.post("/v1/completions", json=completion, headers={"X-Request-Id": "x" * 300})
    assert long.status_code == 400 and long.json()["error"]["param"] == "X-Request-Id"
