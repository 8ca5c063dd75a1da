"""AWQ and GPTQ checkpoints, written by ports of the quantizers' own packers, against
transformers running the dequantized weights (float32 on CPU): greedy ids and top-k logprobs
equal (the divergence rule and tolerance of test_parity.py)."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams

from test_parity import MAX_TOKENS, PROMPTS, check_close, hf_reference, run
from wna16_helpers import quantize_checkpoint

VARIANTS = {
    "awq_g32": ("awq", dict(group_size=32)),
    "gptq4_sym_g32": ("gptq", dict(bits=4, group_size=32, sym=True)),
    "gptq4_asym_act_order": ("gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
    "gptq8_v2_asym": ("gptq", dict(bits=8, group_size=32, sym=False, checkpoint_format="gptq_v2")),
}


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("wna16_float"), seed=11))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_quantized_checkpoint_matches_transformers_on_dequantized_weights(float_checkpoint, tmp_path, variant):
    fmt, options = VARIANTS[variant]
    qdir, refdir = quantize_checkpoint(float_checkpoint, tmp_path / "q", tmp_path / "ref", fmt, **options)
    prompts = PROMPTS[:4]
    ref = hf_reference(str(refdir), prompts, MAX_TOKENS)
    llm, outputs = run(str(qdir), prompts, max_model_len=128, enable_prefix_caching=True)
    check_close(ref, outputs, prompts)
    # The layers really run the int codes, not a float copy.
    proj = llm.llm_engine.engine_core.runner.model.model.layers[0].mlp.down_proj
    assert proj.qweight.dtype == torch.int32 and not hasattr(proj, "weight")


@pytest.mark.parametrize("fmt,options", [("awq", dict(group_size=32)), ("gptq", dict(bits=8, group_size=16,
                                                                                      desc_act=True))])
def test_dummy_load_format_runs(float_checkpoint, tmp_path, fmt, options):
    """--load-format dummy: valid random codes and sane scales, so the engine runs the shape."""
    qdir, _ = quantize_checkpoint(float_checkpoint, tmp_path / "q", tmp_path / "ref", fmt, **options)
    llm = LLM(str(qdir), device="cpu", max_model_len=64, load_format="dummy")
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(temperature=0.0, max_tokens=3, logprobs=2,
                                                                         ignore_eos=True), use_tqdm=False)
    lps = [lp.logprob for step in out[0].outputs[0].logprobs for lp in step.values()]
    assert len(out[0].outputs[0].token_ids) == 3 and all(torch.isfinite(torch.tensor(lps)))
