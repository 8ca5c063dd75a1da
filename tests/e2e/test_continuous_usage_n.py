"""stream_options.continuous_usage_stats with n > 1, as vLLM's serving_chat / serving_completion
report it: each chunk's usage is its prompt's tokens and its own choice's tokens so far (not
the sum over choices); the final usage chunk sums every prompt and every choice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_helpers import MAX_MODEL_LEN
from fastapi.testclient import TestClient

from pagedlm.engine.async_llm import AsyncLLM
from pagedlm.engine_args import EngineArgs
from pagedlm.entrypoints.openai.api_server import build_app
from pagedlm.metrics import PrometheusStatLogger

N = 3
MAX_TOKENS = 5
STREAM = {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
          "n": N, "max_tokens": MAX_TOKENS, "temperature": 1.0, "seed": 3, "ignore_eos": True}


@pytest.fixture(scope="module")
def client(checkpoint: Path):
    engine = AsyncLLM.from_engine_args(EngineArgs(model=str(checkpoint), max_model_len=MAX_MODEL_LEN,
                                                  num_gpu_blocks_override=64, device="cpu"))
    with TestClient(build_app(engine, PrometheusStatLogger("usage_n"), served_model_names=["m"])) as c:
        yield c


def _events(resp) -> list[dict]:
    assert resp.status_code == 200, resp.text
    lines = [line[6:] for line in resp.text.split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


def _per_choice_usage(chunks: list[dict], prompt_tokens: dict[int, int]) -> dict[int, list[int]]:
    """Each choice's completion_tokens over its chunks, checking prompt and total tokens."""
    seen: dict[int, list[int]] = {}
    for chunk in chunks:
        (choice,) = chunk["choices"]
        usage = chunk["usage"]
        assert usage["prompt_tokens"] == prompt_tokens[choice["index"]]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        seen.setdefault(choice["index"], []).append(usage["completion_tokens"])
    return seen


def test_chat_continuous_usage_counts_each_choice(client: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me"}], **STREAM}
    events = _events(client.post("/v1/chat/completions", json=body))
    *chunks, final = events
    num_prompt = final["usage"]["prompt_tokens"]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == N * MAX_TOKENS
    assert final["usage"]["total_tokens"] == num_prompt + N * MAX_TOKENS
    seen = _per_choice_usage(chunks, {i: num_prompt for i in range(N)})
    assert sorted(seen) == list(range(N))
    for index, counts in seen.items():
        assert counts[0] == 0, index  # the role chunk
        assert counts == sorted(counts) and counts[-1] == MAX_TOKENS, (index, counts)


def test_completions_continuous_usage_counts_each_choice(client: TestClient) -> None:
    prompts = ["Hello there", "The quick brown fox jumps"]
    num_prompt = [len(client.post("/tokenize", json={"prompt": p}).json()["tokens"]) for p in prompts]
    assert num_prompt[0] != num_prompt[1]
    events = _events(client.post("/v1/completions", json={"prompt": prompts, **STREAM}))
    *chunks, final = events
    assert final["choices"] == []
    assert final["usage"]["prompt_tokens"] == sum(num_prompt)
    assert final["usage"]["completion_tokens"] == len(prompts) * N * MAX_TOKENS
    seen = _per_choice_usage(chunks, {p * N + i: num_prompt[p] for p in range(len(prompts)) for i in range(N)})
    assert sorted(seen) == list(range(len(prompts) * N))
    for index, counts in seen.items():  # one token a chunk
        # own choice's tokens so far: rising to MAX_TOKENS (a busy stream may carry two tokens in a chunk)
        assert counts == sorted(set(counts)) and counts[0] >= 1 and counts[-1] == MAX_TOKENS, (index, counts)
