"""Sequence-classification models through a real ``pagedlm serve`` (tiny random checkpoints
written here): /classify's vLLM shape (index, label from id2label, probs, num_classes, usage)
against transformers' softmax / sigmoid, and /score, /rerank, /v2/rerank with a cross-encoder
(each pair one sequence with token types) against transformers; the refusals (score with
several labels, embeddings on a classifier, bad use_activation)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import torch

from e2e_helpers import Server, running_server  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent / "models"))
from cross_encoder_helpers import build_bert_classifier, hf_logits  # noqa: E402

QUERY = "what is the capital of france"
DOCS = ["berlin is a city", "paris is the capital of france", "the quick brown fox", "hello world"]
TOL = 1e-4


@pytest.fixture(scope="module")
def ce_dir(tmp_path_factory) -> Path:
    return build_bert_classifier(tmp_path_factory.mktemp("ce_srv"), num_labels=1)


@pytest.fixture(scope="module")
def cls_dir(tmp_path_factory) -> Path:
    return build_bert_classifier(tmp_path_factory.mktemp("cls_srv"), num_labels=3, seed=1)


def _serve(model_dir: Path, name: str, tmp_path_factory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp(name)
    with running_server([str(model_dir), "--served-model-name", name, "--device", "cpu"], work / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def ce_server(ce_dir, tmp_path_factory) -> Iterator[Server]:
    yield from _serve(ce_dir, "reranker", tmp_path_factory)


@pytest.fixture(scope="module")
def cls_server(cls_dir, tmp_path_factory) -> Iterator[Server]:
    yield from _serve(cls_dir, "classifier", tmp_path_factory)


def _post(server: Server, path: str, **body) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def test_classify_answers_vllm_shape_with_labels(cls_server, cls_dir) -> None:
    texts = ["hello world", "the lazy dog jumps", "paris"]
    response = _post(cls_server, "/classify", model="classifier", input=texts)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("classify-") and body["object"] == "list" and body["model"] == "classifier"
    refs = [torch.softmax(r, -1) for r in hf_logits(cls_dir, texts)]
    for i, (item, ref) in enumerate(zip(body["data"], refs)):
        assert item["index"] == i and item["num_classes"] == 3
        torch.testing.assert_close(torch.tensor(item["probs"]), ref, atol=TOL, rtol=0)
        assert item["label"] == ["label_a", "label_b", "label_c"][int(ref.argmax())]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(texts) * 2
    raw = _post(cls_server, "/v1/classify", input="hello world", use_activation=False).json()
    torch.testing.assert_close(torch.tensor(raw["data"][0]["probs"]), hf_logits(cls_dir, ["hello world"])[0],
                               atol=TOL, rtol=0)


def test_classifier_refusals(cls_server) -> None:
    refused = _post(cls_server, "/score", text_1=QUERY, text_2=DOCS)
    assert refused.status_code == 400 and "num_labels == 1" in refused.json()["error"]["message"], refused.text
    embed = _post(cls_server, "/v1/embeddings", input="hello")
    assert embed.status_code == 400 and "classify" in embed.json()["error"]["message"], embed.text
    bad = _post(cls_server, "/classify", input="hello", use_activation="maybe")
    assert bad.status_code == 400, bad.text
    conflict = _post(cls_server, "/classify", input="hello", use_activation=True, softmax=False)
    assert conflict.status_code == 400 and "deprecated" in conflict.json()["error"]["message"], conflict.text
    assert _post(cls_server, "/classify", input=[]).status_code == 400
    assert _post(cls_server, "/classify", input="x", model="nope").status_code == 404


def test_cross_encoder_score_and_rerank_match_transformers(ce_server, ce_dir) -> None:
    refs = torch.sigmoid(torch.stack(hf_logits(ce_dir, [(QUERY, d) for d in DOCS]))[:, 0])
    score = _post(ce_server, "/score", model="reranker", text_1=QUERY, text_2=DOCS)
    assert score.status_code == 200, score.text
    body = score.json()
    assert [d["index"] for d in body["data"]] == list(range(len(DOCS)))
    torch.testing.assert_close(torch.tensor([d["score"] for d in body["data"]]), refs, atol=TOL, rtol=0)
    pairwise = _post(ce_server, "/v1/score", queries=[QUERY, DOCS[0]], documents=DOCS[:2]).json()
    ref_pairs = torch.sigmoid(torch.stack(hf_logits(ce_dir, [(QUERY, DOCS[0]), (DOCS[0], DOCS[1])]))[:, 0])
    torch.testing.assert_close(torch.tensor([d["score"] for d in pairwise["data"]]), ref_pairs, atol=TOL, rtol=0)
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        rerank = _post(ce_server, path, query=QUERY, documents=DOCS, top_n=2).json()
        order = torch.argsort(refs, descending=True)[:2].tolist()
        assert [r["index"] for r in rerank["results"]] == order, rerank
        torch.testing.assert_close(torch.tensor([r["relevance_score"] for r in rerank["results"]]), refs[order],
                                   atol=TOL, rtol=0)
        assert rerank["results"][0]["document"] == {"text": DOCS[order[0]]}
    logits = _post(ce_server, "/score", text_1=QUERY, text_2=DOCS[:1], use_activation=False).json()
    assert abs(logits["data"][0]["score"] - torch.logit(refs[0]).item()) < 1e-3
    classify = _post(ce_server, "/classify", input=DOCS[:1]).json()
    assert classify["data"][0]["num_classes"] == 1 and classify["data"][0]["label"] == "label_a"
