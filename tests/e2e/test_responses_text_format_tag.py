"""/v1/responses and structural tags, as vLLM: its ResponsesRequest types ``text`` as OpenAI's
ResponseTextConfig, whose ``format`` is text / json_object / json_schema only, so a
``structural_tag`` text.format is a 400 (here with a message that names the way that works);
the ``structured_outputs`` extra does carry a structural tag to the engine."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("xgrammar")

from e2e_helpers import MAX_MODEL_LEN  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from pagedlm.engine.async_llm import AsyncLLM  # noqa: E402
from pagedlm.engine_args import EngineArgs  # noqa: E402
from pagedlm.entrypoints.openai.api_server import build_app  # noqa: E402
from pagedlm.metrics import PrometheusStatLogger  # noqa: E402

PET = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}}, "required": ["kind"],
       "additionalProperties": False}
STRUCTURES = {"structures": [{"begin": "<pet>", "schema": PET, "end": "</pet>"}], "triggers": ["<"]}
FORMAT = {"format": {"type": "triggered_tags", "triggers": ["<"], "tags": [
    {"type": "tag", "begin": "<pet>", "content": {"type": "json_schema", "json_schema": PET}, "end": "</pet>"}]}}


@pytest.fixture(scope="module")
def client(checkpoint: Path) -> Iterator[TestClient]:
    args = EngineArgs(model=str(checkpoint), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=64, device="cpu")
    engine = AsyncLLM.from_engine_args(args)
    with TestClient(build_app(engine, PrometheusStatLogger("resp_tag"), served_model_names=["tiny"])) as c:
        yield c


def _post(client: TestClient, **body):
    return client.post("/v1/responses", json={"model": "tiny", "input": "a pet", "max_output_tokens": 40, **body})


@pytest.mark.parametrize("shape", [STRUCTURES, FORMAT], ids=["structures", "format"])
@pytest.mark.parametrize("stream", [False, True])
def test_structural_tag_text_format_is_a_clear_400(client: TestClient, shape: dict, stream: bool) -> None:
    resp = _post(client, text={"format": {"type": "structural_tag", **shape}}, stream=stream)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "text.format.type"
    assert "'structural_tag' is not supported" in error["message"]
    assert "'text', 'json_object', 'json_schema'" in error["message"]
    assert "structured_outputs" in error["message"], error


def test_unknown_text_format_type_is_a_400(client: TestClient) -> None:
    resp = _post(client, text={"format": {"type": "regex", "pattern": "a+"}})
    assert resp.status_code == 400, resp.text
    assert "'regex' is not supported" in resp.json()["error"]["message"]
    for ok in ({"type": "text"}, {"type": "json_object"}):
        assert _post(client, text={"format": ok}, max_output_tokens=3).status_code == 200, ok


def test_structural_tag_through_structured_outputs(client: TestClient) -> None:
    """The way the 400 names: the tag reaches the grammar (a bad one is a 400, a good one
    shapes the text: with the trigger favoured, every "<" opens a valid <pet> body)."""
    bad = _post(client, structured_outputs={"structural_tag": json.dumps({"type": "structural_tag",
                                                                           "structures": [{"begin": "<pet>"}],
                                                                           "triggers": ["<"]})})
    assert bad.status_code == 400 and "schema" in bad.json()["error"]["message"], bad.text
    trigger = client.post("/tokenize", json={"prompt": "<", "add_special_tokens": False}).json()["tokens"][0]
    tag = json.dumps({"type": "structural_tag", **STRUCTURES})
    found = 0
    for seed in range(3):
        resp = _post(client, structured_outputs={"structural_tag": tag}, temperature=1.0, seed=seed,
                     logit_bias={str(trigger): 8.0})
        assert resp.status_code == 200, resp.text
        text = resp.json()["output"][0]["content"][0]["text"]
        for body in re.findall(r"<pet>(.*?)</pet>", text, re.DOTALL):
            jsonschema.validate(json.loads(body), PET)
            found += 1
        assert all(any(text[i:].startswith(t) or t.startswith(text[i:]) for t in ("<pet>", "</pet>"))
                   for i in range(len(text)) if text[i] == "<"), text
    assert found >= 1
