"""Structural tags over HTTP (the app in-process, its engine core a process of its own):
vLLM's ``response_format`` type ``structural_tag`` in both its shapes, the ``structured_outputs``
extra and the older top-level ``structural_tag`` reach the engine; bad tags are 400s in the
OpenAI error shape before anything runs or streams."""

from __future__ import annotations

import json
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

PET = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]},
                                        "age": {"type": "integer", "minimum": 0, "maximum": 20}},
       "required": ["kind", "age"], "additionalProperties": False}
TRIGGER, BEGIN, END = "<", "<pet>", "</pet>"
STRUCTURES = {"structures": [{"begin": BEGIN, "schema": PET, "end": END}], "triggers": [TRIGGER]}
FORMAT = {"format": {"type": "triggered_tags", "triggers": [TRIGGER], "tags": [
    {"type": "tag", "begin": BEGIN, "content": {"type": "json_schema", "json_schema": PET, "max_whitespace_cnt": 1},
     "end": END}]}}


@pytest.fixture(scope="module")
def client(checkpoint: Path) -> Iterator[TestClient]:
    args = EngineArgs(model=str(checkpoint), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=128, device="cpu")
    engine = AsyncLLM.from_engine_args(args)
    engine.stat_logger = PrometheusStatLogger("structtag")  # its own registry: no clash with other apps
    with TestClient(build_app(engine, engine.stat_logger, served_model_names=["tiny"])) as c:
        yield c


@pytest.fixture(scope="module")
def bias(client: TestClient) -> dict[str, float]:
    ids = client.post("/tokenize", json={"prompt": TRIGGER, "add_special_tokens": False}).json()["tokens"]
    return {str(ids[0]): 8.0}


def bodies(text: str) -> int:
    """Complete structures in text, each checked: every trigger begins one, its body validates;
    an output may end inside the last one (max_tokens)."""
    count, pos = 0, 0
    while (start := text.find(TRIGGER, pos)) != -1:
        if not text[start:].startswith(BEGIN):
            assert BEGIN.startswith(text[start:]), text
            break
        try:
            body, end = json.JSONDecoder().raw_decode(text, start + len(BEGIN))
        except json.JSONDecodeError:
            break  # cut off inside the body
        jsonschema.validate(body, PET)
        assert text.startswith(END, end) or END.startswith(text[end:]), text
        count, pos = count + 1, end + len(END)
    return count


@pytest.mark.parametrize("shape", ["response_format structures", "response_format format", "structured_outputs",
                                   "structural_tag"])
def test_structural_tag_request_shapes_reach_the_engine(client: TestClient, bias: dict, shape: str) -> None:
    tag = json.dumps({"type": "structural_tag", **STRUCTURES})
    extra = {"response_format structures": {"response_format": {"type": "structural_tag", **STRUCTURES}},
             "response_format format": {"response_format": {"type": "structural_tag", **FORMAT}},
             "structured_outputs": {"structured_outputs": {"structural_tag": tag}},
             "structural_tag": {"structural_tag": tag}}[shape]
    body = {"messages": [{"role": "user", "content": "a pet"}], "max_tokens": 60, "temperature": 1.0, "n": 4,
            "logit_bias": bias, "seed": 1, **extra}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    found = sum(bodies(c["message"]["content"] or "") for c in resp.json()["choices"])
    assert found >= 1  # the bias makes structures appear; without the grammar they would not parse
    resp = client.post("/v1/completions", json={"prompt": "Pets:", "max_tokens": 40, "temperature": 1.0, "n": 2,
                                                "logit_bias": bias, **extra})
    assert resp.status_code == 200, resp.text
    for c in resp.json()["choices"]:
        bodies(c["text"])


@pytest.mark.parametrize("extra,message", [
    ({"response_format": {"type": "structural_tag"}}, "either 'structures' and 'triggers' or 'format'"),
    ({"response_format": {"type": "structural_tag", **STRUCTURES, **FORMAT}}, "either"),
    ({"response_format": {"type": "structural_tag", "structures": STRUCTURES["structures"]}}, "triggers must be"),
    ({"response_format": {"type": "structural_tag", "structures": [{"begin": BEGIN, "end": END}],
                          "triggers": [TRIGGER]}}, r"lacks \['schema'\]"),
    ({"response_format": {"type": "structural_tag", "structures": STRUCTURES["structures"], "triggers": ["#"]}},
     "not a prefix of any begin"),
    ({"response_format": {"type": "structural_tag", "format": {"type": "nope"}}}, "nope"),
    ({"response_format": {"type": "json_object", "triggers": [TRIGGER]}}, "structural_tag' only"),
    ({"structured_outputs": {"structural_tag": "{bad json"}}, "not valid JSON"),
    ({"structured_outputs": {"structural_tag": json.dumps(STRUCTURES), "disable_any_whitespace": True}},
     "disable_any_whitespace does not apply"),
    ({"structural_tag": json.dumps(STRUCTURES), "guided_regex": "a+"}, "only one"),
    ({"structural_tag": "{}"}, "give 'structures' and 'triggers'"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_structural_tags_are_400s(client: TestClient, extra: dict, message: str, stream: bool) -> None:
    import re

    body = {"messages": [{"role": "user", "content": "a pet"}], "max_tokens": 5, "stream": stream, **extra}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "BadRequestError" and re.search(message, error["message"]), error
