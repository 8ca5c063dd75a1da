"""POST /v1/responses as vLLM answers it, through the official openai client over the app
in-process: store is accepted and ignored, previous_response_id is a 404, output-text logprobs
(include), reasoning effort, vLLM's extra sampling fields."""

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

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def oai(checkpoint: Path) -> Iterator["openai.OpenAI"]:
    args = EngineArgs(model=str(checkpoint), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=64, device="cpu")
    engine = AsyncLLM.from_engine_args(args)
    engine.stat_logger = PrometheusStatLogger("responses")
    with TestClient(build_app(engine, engine.stat_logger, served_model_names=["tiny"])) as http:
        yield openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0)


def test_store_true_is_ignored_as_vllm(oai) -> None:
    resp = oai.responses.create(model="tiny", input="Hello", max_output_tokens=3, temperature=0.0, store=True)
    assert resp.id.startswith("resp_") and resp.object == "response" and resp.store is False
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens


def test_truncation_is_echoed(oai) -> None:
    """truncation "auto" keeps the end of a prompt longer than the context, and the response
    says which truncation it ran with (as vLLM's echoes the request's)."""
    for truncation in ("auto", "disabled"):
        resp = oai.responses.create(model="tiny", input="Hello", max_output_tokens=2, truncation=truncation)
        assert resp.truncation == truncation


def test_previous_response_id_is_not_found(oai) -> None:
    with pytest.raises(openai.NotFoundError, match="resp_nope"):
        oai.responses.create(model="tiny", input="x", previous_response_id="resp_nope")


def test_include_output_text_logprobs(oai) -> None:
    resp = oai.responses.create(model="tiny", input="Hello", max_output_tokens=4, temperature=0.0,
                                include=["message.output_text.logprobs"], top_logprobs=2)
    (part,) = resp.output[0].content
    assert len(part.logprobs) == 4 and all(len(lp.top_logprobs) == 2 for lp in part.logprobs)
    events = list(oai.responses.create(model="tiny", input="Hello", max_output_tokens=4, temperature=0.0,
                                       include=["message.output_text.logprobs"], stream=True))
    streamed = [lp for e in events if e.type == "response.output_text.delta" for lp in e.logprobs]
    assert [lp.token for lp in streamed] == [lp.token for lp in part.logprobs]
    assert events[-1].response.output[0].content[0].logprobs[0].token == part.logprobs[0].token
    plain = oai.responses.create(model="tiny", input="Hello", max_output_tokens=2)
    assert not plain.output[0].content[0].logprobs


def test_vllm_extra_fields_and_reasoning(oai) -> None:
    resp = oai.responses.create(model="tiny", input="Hello", max_output_tokens=8, temperature=0.0,
                                reasoning={"effort": "low"}, truncation="disabled", service_tier="auto",
                                extra_body={"ignore_eos": True, "top_k": 1, "repetition_penalty": 1.0,
                                            "request_id": "resp_mine", "priority": 0})
    assert resp.id == "resp_mine" and resp.usage.output_tokens == 8
    assert resp.reasoning.effort == "low"
    greedy = oai.responses.create(model="tiny", input="Hello", max_output_tokens=8, temperature=0.0,
                                  extra_body={"ignore_eos": True})
    stopped = oai.responses.create(model="tiny", input="Hello", max_output_tokens=8, temperature=0.0,
                                   extra_body={"ignore_eos": True, "stop": [greedy.output_text[2:4]]})
    assert stopped.usage.output_tokens < 8
    with pytest.raises(openai.BadRequestError, match="reasoning.effort"):
        oai.responses.create(model="tiny", input="x", reasoning={"effort": "max"})


def test_vllm_store_fields_at_their_defaults_and_xargs(oai) -> None:
    """vLLM's ResponsesRequest fields: background / enable_response_messages at their defaults
    and prompt_cache_key (vLLM ignores it) are accepted; true is refused by name; vllm_xargs
    goes to the engine as on chat (refused there without a logits processor to read it)."""
    resp = oai.responses.create(model="tiny", input="Hello", max_output_tokens=2, background=False,
                                prompt_cache_key="k", extra_body={"enable_response_messages": False})
    assert resp.usage.output_tokens == 2
    for name in ("background", "enable_response_messages"):
        with pytest.raises(openai.BadRequestError, match=f"{name}: true"):
            oai.responses.create(model="tiny", input="x", extra_body={name: True})
    kwargs = dict(model="tiny", max_tokens=2, extra_body={"vllm_xargs": {"k": 1}})
    try:
        oai.chat.completions.create(messages=[{"role": "user", "content": "x"}], **kwargs)
        chat_error = None
    except openai.BadRequestError as e:
        chat_error = e.body
    try:
        oai.responses.create(model="tiny", input="x", max_output_tokens=2, extra_body={"vllm_xargs": {"k": 1}})
        responses_error = None
    except openai.BadRequestError as e:
        responses_error = e.body
    assert responses_error == chat_error
