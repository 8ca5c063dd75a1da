"""A decoder sequence-classification checkpoint (tiny random LlamaForSequenceClassification, one
label) through a real ``pagedlm serve``: /classify (sigmoid of the head on the last token) and
/rerank (each pair the tokenizer's pair encoding, no token types) against transformers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import torch

from e2e_helpers import Server, running_server  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent / "models"))
from decoder_classifier_helpers import TEXTS, build_decoder_classifier, hf_decoder_logits  # noqa: E402

TOL = 1e-4
QUERY = "what is the capital of France"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_decoder_classifier(tmp_path_factory.mktemp("deccls_srv") / "m", "LlamaForSequenceClassification", 1,
                                    seed=3)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("deccls_srv_log")
    with running_server([str(model_dir), "--served-model-name", "dec", "--device", "cpu"],
                        work / "server.log") as srv:
        yield srv


def test_classify_and_rerank_match_transformers(server, model_dir) -> None:
    classify = httpx.post(f"{server.url}/classify", json={"model": "dec", "input": TEXTS}, timeout=60)
    assert classify.status_code == 200, classify.text
    probs = torch.tensor([item["probs"] for item in classify.json()["data"]])
    torch.testing.assert_close(probs, torch.sigmoid(hf_decoder_logits(model_dir, TEXTS)), atol=TOL, rtol=0)
    rerank = httpx.post(f"{server.url}/rerank", json={"query": QUERY, "documents": TEXTS}, timeout=60)
    assert rerank.status_code == 200, rerank.text
    refs = torch.sigmoid(hf_decoder_logits(model_dir, [(QUERY, t) for t in TEXTS])[:, 0])
    results = rerank.json()["results"]
    assert [r["index"] for r in results] == torch.argsort(refs, descending=True).tolist()
    torch.testing.assert_close(torch.tensor([r["relevance_score"] for r in results]),
                               refs[[r["index"] for r in results]], atol=TOL, rtol=0)
