"""--calculate-kv-scales with an fp8 KV cache: the first batch of requests (not the start-up
runs) sets every layer's k_scale = max|k| / 200 and v_scale = max|v| / 100 from the rotated
keys and the values it writes to the cache, once; later batches leave them alone."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams
from pagedlm.kernels import reference

PROMPTS = [{"prompt_token_ids": [5, 17, 200, 33, 9, 41]}, {"prompt_token_ids": [300, 7, 7, 12]}]  # vocabulary 512


@pytest.mark.parametrize("warm_up", ["0", "1"])  # the start-up warm-up's requests write KV but set no scale
def test_first_batch_sets_the_scales_once(llama_checkpoint, monkeypatch: pytest.MonkeyPatch, warm_up: str) -> None:
    monkeypatch.setenv("PAGEDLM_WARM_UP", warm_up)
    writes = []
    write = reference.write_kv_cache

    def recording_write(key, value, *args, **kwargs):
        writes.append((key.abs().amax().item(), value.abs().amax().item()))
        return write(key, value, *args, **kwargs)

    monkeypatch.setattr(reference, "write_kv_cache", recording_write)
    llm = LLM(llama_checkpoint, device="cpu", max_model_len=128, kv_cache_dtype="fp8", calculate_kv_scales=True)
    layers = llm.llm_engine.engine_core.runner.model.attention_layers()
    assert bool(writes) == (warm_up == "1")  # the profile run writes no KV; the warm-up's requests do
    assert all(layer.k_scale.item() == layer.v_scale.item() == 1.0 for layer in layers)  # nothing armed
    writes.clear()
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    first = llm.generate(PROMPTS, params, use_tqdm=False)
    # The first step's writes, one per layer: the unfused path (rotate, then write) that run takes.
    for layer, (k_peak, v_peak) in zip(layers, writes[: len(layers)]):
        assert layer.k_scale.item() == pytest.approx(k_peak / 200, rel=1e-6)
        assert layer.v_scale.item() == pytest.approx(v_peak / 100, rel=1e-6)
        assert not layer.calculate_kv_scales
    scales = [(layer.k_scale.item(), layer.v_scale.item()) for layer in layers]
    assert len(set(scales)) == len(layers)  # each layer its own
    llm.generate([{"prompt_token_ids": [400, 401]}], params, use_tqdm=False)
    assert [(layer.k_scale.item(), layer.v_scale.item()) for layer in layers] == scales
    assert all(len(o.outputs[0].token_ids) == 4 for o in first)


def test_without_the_flag_the_scales_stay(llama_checkpoint) -> None:
    llm = LLM(llama_checkpoint, device="cpu", max_model_len=128, kv_cache_dtype="fp8")
    llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=2), use_tqdm=False)
    layers = llm.llm_engine.engine_core.runner.model.attention_layers()
    assert all(torch.equal(layer.k_scale, torch.ones(1)) for layer in layers)
