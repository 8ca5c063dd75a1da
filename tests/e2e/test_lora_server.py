"""LoRA over HTTP: two adapters from --lora-modules (name=path and JSON), /v1/models lists
them under the base model, requests to each adapter and to the base model interleaved
(answers equal the offline engine's), an unknown adapter is a 404, runtime load / unload
(VLLM_ALLOW_RUNTIME_LORA_UPDATING) works, a missing adapter path is vLLM's 404 and a bad
adapter a 400 that says why."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest
import torch

from e2e_helpers import MAX_MODEL_LEN, Server, metric_values, running_server

BASE = "tiny-base"
PROMPTS = ["Hello there, how", "The quick brown fox", "def add(a, b):"]


@pytest.fixture(scope="module")
def adapters(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from transformers import AutoConfig

    from pagedlm.lora.testing import write_random_adapter

    hf_config = AutoConfig.from_pretrained(str(checkpoint))
    root = tmp_path_factory.mktemp("lora_adapters")
    return {name: write_random_adapter(root / name, hf_config, rank=8, seed=i, std=0.3, dtype=torch.float32)
            for i, name in enumerate(["sql", "poet", "late"])}


@pytest.fixture(scope="module")
def lora_server(checkpoint: Path, adapters: dict[str, str], tmp_path_factory) -> Iterator[Server]:
    args = [str(checkpoint), "--served-model-name", BASE, "--max-model-len", str(MAX_MODEL_LEN), "--device", "cpu",
            "--num-gpu-blocks-override", "256", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
            "--lora-modules", f"sql={adapters['sql']}", json.dumps({"name": "poet", "path": adapters["poet"], "base_model_name": "not-served"})]
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    with running_server(args, tmp_path_factory.mktemp("lora_server") / "server.log", env) as srv:
        yield srv


@pytest.fixture(scope="module")
def offline(checkpoint: Path, adapters: dict[str, str]) -> dict[str, list[str]]:
    """Greedy completions of PROMPTS per model name, from the offline engine."""
    from pagedlm import LLM, SamplingParams
    from pagedlm.lora.request import LoRARequest

    llm = LLM(str(checkpoint), device="cpu", max_model_len=MAX_MODEL_LEN, enable_lora=True, max_loras=3,
              max_lora_rank=8)
    loras = {BASE: None, **{n: LoRARequest(n, i + 1, p) for i, (n, p) in enumerate(adapters.items())}}
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    return {name: [o.outputs[0].text for o in llm.generate(PROMPTS, params, use_tqdm=False, lora_request=lora)]
            for name, lora in loras.items()}


def _client(srv: Server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0, timeout=60)


async def _complete_all(srv: Server, models: list[str]) -> dict[str, list[str]]:
    client = _client(srv)

    async def one(model: str, prompt: str) -> str:
        out = await client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0.0,
                                              extra_body={"ignore_eos": True})
        assert out.model == model
        return out.choices[0].text

    jobs = [(m, p) for p in PROMPTS for m in models]  # interleaved: adapters and base in one batch
    texts = await asyncio.gather(*(one(m, p) for m, p in jobs))
    result: dict[str, list[str]] = {m: [] for m in models}
    for (m, _), text in zip(jobs, texts):
        result[m].append(text)
    return result


def test_models_list_adapters_under_the_base(lora_server: Server, adapters: dict[str, str]) -> None:
    data = httpx.get(f"{lora_server.url}/v1/models").json()["data"]
    by_id = {m["id"]: m for m in data}
    assert set(by_id) == {BASE, "sql", "poet"}
    assert by_id["sql"]["parent"] == BASE and by_id["sql"]["root"] == adapters["sql"]
    assert by_id[BASE]["parent"] is None
    # As vLLM's: a base_model_name that is not a served model is not shown as the parent.
    assert httpx.get(f"{lora_server.url}/v1/models/poet").json()["parent"] == BASE


def test_interleaved_adapters_match_offline(lora_server: Server, offline: dict[str, list[str]]) -> None:
    got = asyncio.run(_complete_all(lora_server, ["sql", BASE, "poet"]))
    for model, texts in got.items():
        assert texts == offline[model], model
    assert offline["sql"] != offline[BASE] and offline["poet"] != offline["sql"]  # the adapters do something
    metrics = httpx.get(f"{lora_server.url}/metrics").text
    assert 'lora_requests_info{max_lora="2"' in metrics
    assert metric_values(metrics)["pagedlm:lora_requests_info"] > 0


def test_chat_with_an_adapter_and_unknown_adapter_404(lora_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{lora_server.url}/v1", api_key="x", max_retries=0, timeout=60)
    out = client.chat.completions.create(model="poet", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert out.model == "poet" and out.usage.completion_tokens == 4
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="no-such-adapter", prompt="hi", max_tokens=2)


def test_runtime_load_and_unload(lora_server: Server, adapters: dict[str, str], offline, tmp_path: Path) -> None:
    url = lora_server.url
    load = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "late", "lora_path": adapters["late"]})
    assert load.status_code == 200 and "added successfully" in load.text
    again = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "late", "lora_path": adapters["late"]})
    assert again.status_code == 400 and "set 'load_inplace' to True" in again.json()["error"]["message"]
    assert "late" in {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]}
    got = asyncio.run(_complete_all(lora_server, ["late", "sql"]))
    assert got["late"] == offline["late"] and got["sql"] == offline["sql"]
    # A path with no adapter: vLLM's 404 (NotFoundError), nothing registered.
    bad = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(tmp_path / "nope")})
    assert bad.status_code == 404 and bad.json()["error"]["type"] == "NotFoundError"
    assert "Loading lora bad failed: No adapter found for" in bad.json()["error"]["message"]
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "use_dora": True}))
    (tmp_path / "dora" / "adapter_model.safetensors").write_bytes(b"")
    dora = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "dora", "lora_path": str(tmp_path / "dora")})
    assert dora.status_code == 400 and "DoRA" in dora.json()["error"]["message"]
    # vLLM's lora_int_id: an id no adapter has is a 404; an id naming another adapter than
    # lora_name is a 400; the adapter's own id unloads it.
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_int_id": 999}).status_code == 404
    codes = []
    for lora_int_id in range(1, 9):
        resp = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "late", "lora_int_id": lora_int_id})
        codes.append(resp.status_code)
        if resp.status_code == 200:
            break
        assert resp.status_code in (400, 404) and "lora_int_id" in resp.json()["error"]["message"]
    assert codes[-1] == 200 and 400 in codes  # sql and poet hold ids too
    load = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "late", "lora_path": adapters["late"]})
    assert load.status_code == 200
    unload = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "late"})
    assert unload.status_code == 200 and "removed successfully" in unload.text
    assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "late"}).status_code == 404
    gone = httpx.post(f"{url}/v1/completions", json={"model": "late", "prompt": "hi", "max_tokens": 2})
    assert gone.status_code == 404
    assert {m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]} == {BASE, "sql", "poet"}
