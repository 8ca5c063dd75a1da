"""The pooling endpoints' request fields (/v1/embeddings, /pooling, /classify, /score,
/rerank) in-process (starlette TestClient; the engine core is its own process): vLLM's fields
of every pooling request each work or are refused with a 400 naming them, never dropped as
unknown fields. One app over the tiny decoder run as an embedding model (LAST pooling), one
over a tiny BERT cross-encoder (one label: /classify and cross-encoder /score)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from pagedlm.engine.async_llm import AsyncLLM
from pagedlm.engine_args import EngineArgs
from pagedlm.entrypoints.openai.api_server import build_app
from pagedlm.entrypoints.openai.serving_classification import ClassificationRequest
from pagedlm.entrypoints.openai.serving_embedding import EmbeddingRequest, PoolingRequest
from pagedlm.entrypoints.openai.serving_score import RerankRequest, ScoreRequest
from pagedlm.metrics import PrometheusStatLogger

sys.path.insert(0, str(Path(__file__).parent.parent / "models"))
from cross_encoder_helpers import build_bert_classifier  # noqa: E402

IDS = list(range(5, 13))  # a token-id input of 8 tokens


def _app(model: str, name: str, **engine_kwargs: Any) -> Iterator[tuple[AsyncLLM, TestClient]]:
    engine = AsyncLLM.from_engine_args(EngineArgs(model=model, device="cpu", **engine_kwargs))
    engine.stat_logger = PrometheusStatLogger(name)  # its own registry: no clash with other apps
    with TestClient(build_app(engine, engine.stat_logger, served_model_names=[name])) as client:
        yield engine, client


@pytest.fixture(scope="module")
def embed_app(checkpoint: Path) -> Iterator[tuple[AsyncLLM, TestClient]]:
    yield from _app(str(checkpoint), "embedder", runner="pooling", max_model_len=64)


@pytest.fixture(scope="module")
def ce_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AsyncLLM, TestClient]]:
    yield from _app(str(build_bert_classifier(tmp_path_factory.mktemp("ce_fields"), num_labels=1)), "reranker")


def _ok(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    return resp.json()


def _refused(resp: Any, param: str, needle: str) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and needle in error["message"], error


def _embedding(client: TestClient, **body: Any) -> np.ndarray:
    return np.array(_ok(client.post("/v1/embeddings", json=body))["data"][0]["embedding"])


def test_use_activation_is_vllms_name_of_normalize(embed_app) -> None:
    _, client = embed_app
    raw, plain = _embedding(client, input=IDS, use_activation=False), _embedding(client, input=IDS)
    assert abs(np.linalg.norm(plain) - 1.0) < 1e-5 and abs(np.linalg.norm(raw) - 1.0) > 1e-3
    np.testing.assert_allclose(raw, _embedding(client, input=IDS, normalize=False), rtol=0, atol=1e-6)
    np.testing.assert_allclose(plain, _embedding(client, input=IDS, use_activation=True), rtol=0, atol=1e-6)
    pooled = _ok(client.post("/pooling", json={"input": IDS, "task": "embed", "use_activation": False}))
    np.testing.assert_allclose(pooled["data"][0]["data"], raw, rtol=0, atol=1e-6)
    _refused(client.post("/v1/embeddings", json={"input": IDS, "normalize": True, "use_activation": False}),
             "use_activation", "disagree")


def test_truncation_side_right_keeps_the_first_tokens(embed_app, ce_app) -> None:
    _, client = embed_app
    cut = dict(input=IDS, truncate_prompt_tokens=3)
    np.testing.assert_allclose(_embedding(client, **cut, truncation_side="right"), _embedding(client, input=IDS[:3]),
                               rtol=0, atol=1e-6)
    left = _embedding(client, input=IDS[-3:])
    for side in ("left", None):
        np.testing.assert_allclose(_embedding(client, **cut, truncation_side=side), left, rtol=0, atol=1e-6)
    # /score with an embedding model: the texts share their first token only (LAST pooling).
    pair = {"text_1": "Hello world", "text_2": "Hello there", "truncate_prompt_tokens": 1}
    assert _ok(client.post("/score", json={**pair, "truncation_side": "right"}))["data"][0]["score"] > 0.9999
    assert _ok(client.post("/score", json=pair))["data"][0]["score"] < 0.999
    # /classify; a cross-encoder's pair is cut by its tokenizer (longest text first): refused there.
    _, ce = ce_app
    probs = [_ok(ce.post("/classify", json=body))["data"][0]["probs"] for body in (
        {"input": IDS, "truncate_prompt_tokens": 3, "truncation_side": "right"}, {"input": IDS[:3]},
        {"input": IDS[-3:]})]
    assert probs[0] == probs[1] != probs[2]
    _refused(ce.post("/rerank", json={"query": "paris", "documents": ["a b"], "truncate_prompt_tokens": 4,
                                      "truncation_side": "right"}), "truncation_side", "cross-encoder")


def test_cache_salt_goes_with_every_prompt(embed_app, ce_app, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pooling runs without the prefix cache, so the salt has nothing to keep apart yet; it goes
    to the engine with each prompt as it does for generation, and is checked as vLLM's."""
    for (engine, client), path, body in [
        (embed_app, "/v1/embeddings", {"input": ["a", "b"]}), (embed_app, "/score", {"text_1": "a", "text_2": "b"}),
        (ce_app, "/classify", {"input": "paris"}), (ce_app, "/rerank", {"query": "paris", "documents": ["a"]}),
    ]:
        salts: list[Any] = []
        add_request = engine.add_request

        async def recording(request_id: str, prompt: Any, *args: Any, **kwargs: Any) -> Any:
            salts.append(prompt.get("cache_salt"))
            return await add_request(request_id, prompt, *args, **kwargs)

        monkeypatch.setattr(engine, "add_request", recording)
        _ok(client.post(path, json={**body, "cache_salt": "s1"}))
        assert salts and set(salts) == {"s1"}, path
        monkeypatch.undo()
        resp = client.post(path, json={**body, "cache_salt": ""})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "cache_salt", resp.text


@pytest.mark.parametrize("path", ["/score", "/rerank"])
def test_score_and_rerank_take_request_id_and_user(embed_app, path: str) -> None:
    _, client = embed_app
    body = {"text_1": "a", "text_2": "b"} if path == "/score" else {"query": "a", "documents": ["b"]}
    prefix = path.strip("/")
    assert _ok(client.post(path, json={**body, "request_id": "r-7", "user": "u"}))["id"] == f"{prefix}-r-7"
    assert _ok(client.post(path, json=body, headers={"X-Request-Id": "h-8"}))["id"] == f"{prefix}-h-8"


@pytest.mark.parametrize("path, body, name, value, no_op", [
    ("/v1/embeddings", {"input": "a"}, "padding", "max_length", "do_not_pad"),
    ("/v1/embeddings", {"input": "a"}, "mm_processor_kwargs", {"size": 1}, None),
    ("/v1/embeddings", {"messages": [{"role": "user", "content": "a"}]}, "media_io_kwargs", {"image": {}}, {}),
    ("/pooling", {"input": "a"}, "padding", "max_length", None),
    ("/score", {"text_1": "a", "text_2": "b"}, "max_tokens_per_query", 2, 0),
    ("/score", {"text_1": "a", "text_2": "b"}, "max_tokens_per_doc", 2, 0),
    ("/rerank", {"query": "a", "documents": ["b"]}, "instruction", "Judge", None),
    ("/rerank", {"query": "a", "documents": ["b"]}, "chat_template_kwargs", {"instruction": "Judge"}, None),
    ("/rerank", {"query": "a", "documents": ["b"]}, "padding", "max_length", None),
])
def test_vllm_pooling_fields_pagedlm_lacks_are_refused(embed_app, path: str, body: dict, name: str, value: Any,
                                                       no_op: Any) -> None:
    _, client = embed_app
    _refused(client.post(path, json={**body, name: value}), name, f"{name} is not supported")
    _ok(client.post(path, json={**body, name: no_op}))


def test_classify_refuses_what_it_lacks(ce_app) -> None:
    _, client = ce_app
    _refused(client.post("/classify", json={"input": "paris", "padding": "max_length"}), "padding", "not supported")
    _ok(client.post("/classify", json={"input": "paris", "padding": "do_not_pad", "user": "u"}))


def test_vllm_pooling_request_fields_are_all_declared() -> None:
    # vLLM's pooling request fields (PoolingBasicRequestMixin and each endpoint's): each works or
    # is refused (none is dropped as an unknown field).
    basic = {"model", "user", "truncate_prompt_tokens", "padding", "truncation_side", "request_id", "priority",
             "mm_processor_kwargs", "cache_salt"}
    chat = {"messages", "add_generation_prompt", "continue_final_message", "add_special_tokens", "chat_template",
            "chat_template_kwargs", "media_io_kwargs"}
    embed = basic | chat | {"input", "encoding_format", "embed_dtype", "endianness", "dimensions", "use_activation"}
    score = basic | {"use_activation", "max_tokens_per_query", "max_tokens_per_doc", "instruction",
                     "chat_template_kwargs"}
    assert embed <= set(EmbeddingRequest.model_fields)
    assert embed | {"task"} <= set(PoolingRequest.model_fields)
    assert basic | {"input", "add_special_tokens", "use_activation"} <= set(ClassificationRequest.model_fields)
    assert score | {"text_1", "text_2", "data_1", "data_2", "queries", "documents", "items"} <= set(
        ScoreRequest.model_fields)
    assert score | {"query", "documents", "top_n"} <= set(RerankRequest.model_fields)


def test_async_llm_encode_is_vllms_pooling_call(embed_app) -> None:
    """AsyncLLM.encode(prompt, pooling_params, request_id) as in vLLM: the request's pooled
    output, equal to /v1/embeddings'; vLLM's older truncate_prompt_tokens argument works and
    what pagedlm does not implement is refused."""
    from pagedlm.pooling_params import PoolingParams

    engine, client = embed_app

    async def encode(request_id: str, params: PoolingParams, **kwargs: Any) -> list[Any]:
        return [out async for out in engine.encode({"prompt_token_ids": IDS}, params, request_id, **kwargs)]

    (out,) = [o for o in client.portal.call(encode, "enc-1", PoolingParams(task="embed")) if o.finished]
    np.testing.assert_allclose(np.asarray(out.outputs.data, dtype=np.float64), _embedding(client, input=IDS),
                               rtol=0, atol=1e-5)
    assert out.prompt_token_ids == IDS
    (cut,) = [o for o in client.portal.call(lambda: encode("enc-2", PoolingParams(task="embed"),
                                                           truncate_prompt_tokens=3)) if o.finished]
    assert cut.prompt_token_ids == IDS[-3:]
    for kwargs, needle in (({"trace_headers": {"a": "b"}}, "trace_headers"),
                           ({"tokenization_kwargs": {"truncation": True}}, "tokenization_kwargs")):
        with pytest.raises(ValueError, match=needle):
            client.portal.call(lambda: encode("enc-3", PoolingParams(task="embed"), **kwargs))
