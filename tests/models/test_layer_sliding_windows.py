"""Sliding windows per layer: Qwen2 / Qwen3 with ``use_sliding_window`` window only the layers
from ``max_window_layers`` on (the config's ``layer_types``), Mistral every layer; prompt
logprobs equal transformers'. (Every layer used to be windowed.)"""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams

PROMPT = [(i * 37) % 500 + 5 for i in range(40)]  # 5x the window of 8


@pytest.mark.parametrize("arch, overrides", [
    ("Qwen2ForCausalLM", dict(use_sliding_window=True, max_window_layers=1)),  # layer 1 windowed
    ("Qwen2ForCausalLM", dict(use_sliding_window=True, max_window_layers=2)),  # none
    ("Qwen2ForCausalLM", dict(use_sliding_window=True, max_window_layers=0)),  # both
    ("Qwen3ForCausalLM", dict(use_sliding_window=True, max_window_layers=1)),
    ("MistralForCausalLM", dict()),  # no layer types: every layer
], ids=["qwen2-from1", "qwen2-none", "qwen2-all", "qwen3-from1", "mistral"])
def test_per_layer_sliding_windows_match_transformers(tmp_path, arch: str, overrides: dict) -> None:
    from transformers import AutoModelForCausalLM

    from pagedlm.demo import build_tiny_checkpoint

    path = str(build_tiny_checkpoint(tmp_path / "ckpt", arch, seed=100, sliding_window=8, **overrides))
    llm = LLM(path, device="cpu", dtype="float32", enable_prefix_caching=False)
    out = llm.generate({"prompt_token_ids": PROMPT}, SamplingParams(max_tokens=1, prompt_logprobs=0),
                       use_tqdm=False)[0]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = model(torch.tensor([PROMPT])).logits[0].float().log_softmax(-1)
    err = max(abs(out.prompt_logprobs[i][PROMPT[i]].logprob - ref[i - 1, PROMPT[i]].item())
              for i in range(1, len(PROMPT)))
    assert err < 1e-3, f"max |prompt logprob - transformers| = {err:.3f}"
