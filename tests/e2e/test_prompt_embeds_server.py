"""/v1/completions' prompt_embeds (vLLM's): base64 of torch.save(tensor [num_tokens, hidden]),
served only under --enable-prompt-embeds; the app in-process (the engine core is its own
process, so the tensor crosses the msgpack transport as raw bytes)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
import torch
from e2e_helpers import MAX_MODEL_LEN
from fastapi.testclient import TestClient

from pagedlm.engine.async_llm import AsyncLLM
from pagedlm.engine_args import EngineArgs
from pagedlm.entrypoints.openai.api_server import build_app
from pagedlm.metrics import PrometheusStatLogger

IDS = [1, 5, 9, 14, 3, 22, 7]


def _client(checkpoint: Path, enable: bool) -> TestClient:
    args = EngineArgs(model=str(checkpoint), max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=64, device="cpu",
                      dtype="float32", enable_prompt_embeds=enable)
    engine = AsyncLLM.from_engine_args(args)
    engine.stat_logger = PrometheusStatLogger(f"embeds{int(enable)}")
    return TestClient(build_app(engine, engine.stat_logger, served_model_names=["m"]))


def _payload(tensor: torch.Tensor) -> str:
    buf = io.BytesIO()
    torch.save(tensor, buf)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def table(checkpoint: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    weights = {}
    for path in sorted(checkpoint.glob("*.safetensors")):
        weights.update(load_file(str(path)))
    return weights["model.embed_tokens.weight"]


def test_base64_payloads_give_the_tokens_of_the_ids(checkpoint: Path, table: torch.Tensor) -> None:
    body = {"model": "m", "max_tokens": 6, "temperature": 0.0, "ignore_eos": True, "logprobs": 2}
    with _client(checkpoint, True) as client:
        ref = client.post("/v1/completions", json={**body, "prompt": [IDS, IDS[:4]]}).json()
        got = client.post("/v1/completions", json={**body, "prompt_embeds": [_payload(table[IDS]),
                                                                            _payload(table[IDS[:4]])]})
        assert got.status_code == 200, got.text
        got = got.json()
        assert [c["text"] for c in got["choices"]] == [c["text"] for c in ref["choices"]]
        # (The server may batch the two prompts into other steps than the reference's: float
        # noise only; the offline test compares exactly.)
        for a, b in zip(got["choices"], ref["choices"]):
            assert a["logprobs"]["token_logprobs"] == pytest.approx(b["logprobs"]["token_logprobs"], abs=1e-5)
        assert got["usage"]["prompt_tokens"] == ref["usage"]["prompt_tokens"] == len(IDS) + 4
        # Embeds and a text prompt in one request (embeds first, as vLLM's); streamed too.
        mixed = client.post("/v1/completions", json={**body, "prompt": [IDS[:4]], "prompt_embeds": _payload(table[IDS]),
                                                     "stream": True, "stream_options": {"include_usage": True}})
        assert mixed.status_code == 200, mixed.text
        assert '"prompt_tokens":11' in mixed.text.replace(" ", "")
        # Bad payloads: 400s naming the field.
        for bad, needle in ((_payload(torch.zeros(3, 5)), "hidden size"), ("!!", "base64"),
                            (_payload({"a": torch.zeros(2)}), "one tensor"),
                            (_payload(torch.zeros(3, table.shape[1], dtype=torch.int32)), "float32")):
            resp = client.post("/v1/completions", json={**body, "prompt_embeds": bad})
            assert resp.status_code == 400 and needle in resp.json()["error"]["message"], resp.text
        resp = client.post("/v1/completions", json={**body, "prompt_embeds": _payload(table[IDS]), "echo": True})
        assert resp.status_code == 400 and "echo" in resp.json()["error"]["message"]
        resp = client.post("/v1/completions", json={**body, "prompt_embeds": _payload(table[IDS]),
                                                    "prompt_logprobs": 1})
        assert resp.status_code == 400 and "prompt_logprobs" in resp.json()["error"]["message"]
        assert client.post("/v1/completions", json={"model": "m"}).status_code == 400  # neither prompt nor embeds


def test_refused_unless_enabled(checkpoint: Path, table: torch.Tensor) -> None:
    with _client(checkpoint, False) as client:
        resp = client.post("/v1/completions", json={"model": "m", "prompt_embeds": _payload(table[IDS])})
        assert resp.status_code == 400
        assert "--enable-prompt-embeds" in resp.json()["error"]["message"]
