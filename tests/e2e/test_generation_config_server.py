"""The server applies the model's generation_config.json as default sampling parameters
(--generation-config auto): unset request fields take them, set ones win, max_new_tokens
caps max_tokens; with --generation-config vllm they are ignored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from pagedlm.engine.async_llm import AsyncLLM
from pagedlm.engine_args import EngineArgs
from pagedlm.entrypoints.openai.api_server import build_app
from pagedlm.metrics import PrometheusStatLogger
from pagedlm.sampling_params import SamplingParams

GEN_CONFIG = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "max_new_tokens": 5}


@pytest.fixture(scope="module")
def gen_checkpoint(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gen_ckpt")
    shutil.copytree(checkpoint, path, dirs_exist_ok=True)
    (path / "generation_config.json").write_text(json.dumps(GEN_CONFIG))
    return path


def _app(model: Path, generation_config: str, seen: list[SamplingParams]) -> tuple[AsyncLLM, TestClient]:
    engine = AsyncLLM.from_engine_args(EngineArgs(model=str(model), max_model_len=128, num_gpu_blocks_override=64,
                                                  device="cpu", generation_config=generation_config))
    add_request = engine.add_request

    async def spy(request_id, prompt, params, *args, **kwargs):
        seen.append(params)
        return await add_request(request_id, prompt, params, *args, **kwargs)

    engine.add_request = spy  # type: ignore[method-assign]
    engine.stat_logger = PrometheusStatLogger("gencfg")
    return engine, TestClient(build_app(engine, engine.stat_logger, served_model_names=["gencfg"]))


@pytest.fixture(scope="module", params=["auto", "vllm"])
def served(request, gen_checkpoint: Path) -> Iterator[tuple[str, TestClient, list[SamplingParams]]]:
    seen: list[SamplingParams] = []
    _, client = _app(gen_checkpoint, request.param, seen)
    with client:
        yield request.param, client, seen


def _complete(client: TestClient, seen: list[SamplingParams], **body) -> tuple[dict, SamplingParams]:
    resp = client.post("/v1/completions", json={"prompt": "Hello", "ignore_eos": True, **body})
    assert resp.status_code == 200, resp.text
    return resp.json(), seen[-1]


def test_defaults_applied_overridden_or_ignored(served) -> None:
    mode, client, seen = served
    out, params = _complete(client, seen)
    if mode == "auto":
        assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (0.7, 0.8, 20, 1.05)
        assert out["usage"]["completion_tokens"] == 5  # max_new_tokens is the default max_tokens
    else:
        assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty) == (1.0, 1.0, 0, 1.0)
        assert out["usage"]["completion_tokens"] == 16  # the completions default, as OpenAI's and vLLM's
    out, params = _complete(client, seen, temperature=0.2, top_k=4, max_tokens=3)
    assert (params.temperature, params.top_k, out["usage"]["completion_tokens"]) == (0.2, 4, 3)
    assert params.top_p == (0.8 if mode == "auto" else 1.0)
    out, _ = _complete(client, seen, max_tokens=9)
    assert out["usage"]["completion_tokens"] == (5 if mode == "auto" else 9)  # vLLM caps at max_new_tokens
