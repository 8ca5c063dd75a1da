"""--hf-overrides / LLM(hf_overrides=...): the overridden config is the one the model runs, and
greedy ids equal transformers loading the checkpoint with the same overrides."""

from __future__ import annotations

import torch

from pagedlm import LLM, SamplingParams
from pagedlm.engine_args import apply_hf_overrides

PROMPT = [5, 17, 23, 9, 41, 7]


def _greedy(llm: LLM) -> list[int]:
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    return llm.generate({"prompt_token_ids": PROMPT}, params, use_tqdm=False)[0].outputs[0].token_ids


def test_overrides_run_as_transformers_runs_them(llama_checkpoint: str) -> None:
    from transformers import AutoModelForCausalLM

    overrides = {"rms_norm_eps": 0.5}
    llm = LLM(llama_checkpoint, device="cpu", dtype="float32", hf_overrides=overrides)
    assert llm.llm_engine.model_config.hf_config.rms_norm_eps == 0.5
    ours = _greedy(llm)
    model = AutoModelForCausalLM.from_pretrained(llama_checkpoint, dtype=torch.float32, **overrides).eval()
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
