"""--hf-overrides / LLM(hf_overrides=...): the overridden config is the one the model runs, and
greedy ids equal transformers loading the checkpoint with the same overrides."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams
from pagedlm.hf_overrides import apply_hf_overrides

PROMPT = [5, 17, 23, 9, 41, 7]


def _greedy(llm: LLM) -> list[int]:
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    return llm.generate({"prompt_token_ids": PROMPT}, params, use_tqdm=False)[0].outputs[0].token_ids


@pytest.mark.parametrize("overrides", [{"rms_norm_eps": 0.5}, {"rope_theta": 3.0}])
def test_overrides_run_as_transformers_runs_them(llama_checkpoint: str, overrides: dict) -> None:
    """vLLM's spelling of each override; transformers 5 keeps rope_theta inside rope_parameters
    (with the checkpoint's llama3 scaling), which is what the model reads."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    hf_kwargs = dict(overrides)
    if "rope_theta" in hf_kwargs:
        rope = json.loads((Path(llama_checkpoint) / "config.json").read_text())["rope_parameters"]
        hf_kwargs = {"rope_parameters": {**rope, "rope_theta": hf_kwargs.pop("rope_theta")}}
    llm = LLM(llama_checkpoint, device="cpu", dtype="float32", hf_overrides=overrides)
    ours = _greedy(llm)
    model = AutoModelForCausalLM.from_pretrained(llama_checkpoint, dtype=torch.float32, **hf_kwargs).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False, min_new_tokens=8)
    assert ours == out[0, len(PROMPT):].tolist()
    assert ours != _greedy(LLM(llama_checkpoint, device="cpu", dtype="float32"))  # the override mattered


def test_nested_objects_merge_key_by_key() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 2.0}, rms_norm_eps=1e-6)
    apply_hf_overrides(config, {"rope_scaling": {"factor": 4.0}, "rms_norm_eps": 1e-5, "new_key": [1, 2]})
    assert config.rope_scaling["rope_type"] == "linear" and config.rope_scaling["factor"] == 4.0
    assert config.rms_norm_eps == 1e-5 and config.new_key == [1, 2]


def test_gemma3_multimodal_text_config_overrides_reach_the_lifted_config() -> None:
    from types import SimpleNamespace

    from pagedlm.config import ConfigError
    from pagedlm.models.multimodal import text_only_overrides

    lifted = SimpleNamespace(architectures=["Gemma3ForConditionalGeneration"], max_position_embeddings=8192)
    assert text_only_overrides(lifted, {"text_config": {"max_position_embeddings": 77}, "x": 1}) == {
        "max_position_embeddings": 77, "x": 1}
    llama = SimpleNamespace(architectures=["LlamaForCausalLM"])
    assert text_only_overrides(llama, {"text_config": {"a": 1}}) == {"text_config": {"a": 1}}
    with pytest.raises(ConfigError, match="text_config must be a JSON object"):
        text_only_overrides(lifted, {"text_config": 3})


def test_rope_keys_reach_per_layer_type_rope_parameters() -> None:
    from transformers import Gemma3TextConfig

    config = Gemma3TextConfig()
    apply_hf_overrides(config, {"rope_theta": 5.0, "rope_local_base_freq": 7.0})
    assert config.rope_parameters["full_attention"]["rope_theta"] == 5.0
    assert config.rope_parameters["sliding_attention"]["rope_theta"] == 7.0
