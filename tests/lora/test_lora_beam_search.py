"""Beam search under a LoRA adapter (vLLM's LLM.beam_search(..., lora_request=...) and the
server's use_beam_search with an adapter's model name): every beam's step requests carry the
adapter, so the beams equal those of the same search over the merged checkpoint (peft's
merge_and_unload, saved as a plain model) and differ from the base model's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pagedlm import LLM
from pagedlm.lora.request import LoRARequest
from pagedlm.sampling_params import BeamSearchParams

from .lora_helpers import ALL_TARGETS, make_adapter, merged_model

pytest.importorskip("peft")

MAX_MODEL_LEN = 128
PROMPTS = [[11, 23, 5, 60, 2], list(range(30, 46))]
PARAMS = BeamSearchParams(beam_width=3, max_tokens=5, ignore_eos=True)


@pytest.fixture(scope="module")
def checkpoints(checkpoint_factory, tmp_path_factory) -> tuple[str, str, str]:
    """(base, adapter, merged): the merged one is base + adapter as one plain checkpoint."""
    base = checkpoint_factory("llama")
    root = tmp_path_factory.mktemp("beam_lora")
    adapter = make_adapter(base, root / "adapter", ALL_TARGETS, r=8, seed=5, std=0.2)
    merged = root / "merged"
    merged_model(base, adapter).save_pretrained(str(merged))
    for f in Path(base).iterdir():  # the tokenizer files
        if f.is_file() and not (merged / f.name).exists() and "safetensors" not in f.name:
            shutil.copy(f, merged / f.name)
    return base, adapter, str(merged)


@pytest.fixture(scope="module")
def lora_llm(checkpoints) -> LLM:
    return LLM(checkpoints[0], device="cpu", enable_lora=True, max_lora_rank=8, max_model_len=MAX_MODEL_LEN)


def _beams(outputs) -> list[list[list[int]]]:
    return [[s.tokens for s in o.sequences] for o in outputs]


def test_offline_beam_search_under_adapter_equals_merged(checkpoints, lora_llm: LLM) -> None:
    _, adapter, merged = checkpoints
    lora = LoRARequest("beam", 1, adapter)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    under_adapter = lora_llm.beam_search(prompts, PARAMS, lora_request=lora)
    base = lora_llm.beam_search(prompts, PARAMS)
    reference = LLM(merged, device="cpu", max_model_len=MAX_MODEL_LEN).beam_search(prompts, PARAMS)
    assert _beams(under_adapter) == _beams(reference)
    for ours, ref in zip(under_adapter, reference):
        for s, r in zip(ours.sequences, ref.sequences):
            assert abs(s.cum_logprob - r.cum_logprob) < 1e-3
    assert all(a != b for a, b in zip(_beams(under_adapter), _beams(base))), "the adapter changed nothing"
    # one adapter per prompt: the second prompt on the base model
    mixed = lora_llm.beam_search(prompts, PARAMS, lora_request=[lora, None])
    assert _beams(mixed) == [_beams(under_adapter)[0], _beams(base)[1]]


def test_server_beam_search_with_adapter_model(checkpoints, lora_llm: LLM) -> None:
    """use_beam_search with an adapter's name as ``model`` (a 400 before): completions and
    chat answer with the beams of the offline search under that adapter."""
    from fastapi.testclient import TestClient

    from pagedlm.engine.async_llm import AsyncLLM
    from pagedlm.engine_args import EngineArgs
    from pagedlm.entrypoints.openai.api_server import build_app
    from pagedlm.entrypoints.openai.serving_lora import build_lora_modules
    from pagedlm.metrics import PrometheusStatLogger

    base, adapter, _ = checkpoints
    engine = AsyncLLM.from_engine_args(EngineArgs(model=base, device="cpu", enable_lora=True, max_lora_rank=8,
                                                  max_model_len=MAX_MODEL_LEN, num_gpu_blocks_override=64))
    modules = build_lora_modules([f"beam={adapter}"], engine.config, ["base"])
    client = TestClient(build_app(engine, PrometheusStatLogger("beamlora"), served_model_names=["base"],
                                  lora_modules=modules))
    tokenizer = lora_llm.get_tokenizer()
    lora = LoRARequest("beam", 1, adapter)
    prompt = PROMPTS[1]
    expected = {name: [tokenizer.decode(s.tokens[len(prompt):], skip_special_tokens=True) for s in out.sequences]
                for name, out in [("beam", lora_llm.beam_search([{"prompt_token_ids": prompt}], PARAMS,
                                                                lora_request=lora)[0]),
                                  ("base", lora_llm.beam_search([{"prompt_token_ids": prompt}], PARAMS)[0])]}
    assert expected["beam"] != expected["base"]
    body = {"prompt": prompt, "use_beam_search": True, "n": PARAMS.beam_width, "max_tokens": PARAMS.max_tokens,
            "ignore_eos": True}
    with client:
        for model in ("beam", "base"):
            resp = client.post("/v1/completions", json={**body, "model": model})
            assert resp.status_code == 200, resp.text
            assert [c["text"] for c in resp.json()["choices"]] == expected[model], model
        chat = client.post("/v1/chat/completions", json={
            "model": "beam", "messages": [{"role": "user", "content": "hi"}], "use_beam_search": True, "n": 2,
            "max_tokens": 3, "ignore_eos": True})
        assert chat.status_code == 200, chat.text
        assert len(chat.json()["choices"]) == 2 and chat.json()["model"] == "beam"
