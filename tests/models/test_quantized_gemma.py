"""Quantized Gemma 2 and Gemma 3 checkpoints (GeGLU, (1 + w) norms around every block, logit
soft-capping): the attention and MLP projections run their linear methods. Against
transformers running the dequantized weights (float32, CPU): greedy ids and top-k logprobs at
the parity tolerance for AWQ and GPTQ (Gemma 2, Gemma 3's text model, and the language model
of a multimodal Gemma 3 checkpoint, whose vision tower is skipped as in a float one), and at
test_quant_parity's tolerance for fp8 with per-token activations (the layers quantize their
own inputs: Gemma's norms do not emit activation codes)."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM

from quant_helpers import FP8
from quant_parity_helpers import PARITY_PROMPTS, assert_fp8_token_parity, assert_wna16_parity
from test_parity import check_close, run
from wna16_helpers import quantize_checkpoint


def layer0(llm: LLM):
    return llm.llm_engine.engine_core.runner.model.model.layers[0]


@pytest.mark.parametrize("arch,fmt,options", [
    ("gemma2", "awq", dict(group_size=16)),
    ("gemma3", "gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
])
def test_wna16_matches_transformers_on_dequantized_weights(checkpoint_factory, tmp_path, arch, fmt, options):
    layer = layer0(assert_wna16_parity(checkpoint_factory(arch), tmp_path, fmt, **options))
    assert layer.self_attn.qkv_proj.qweight.dtype == torch.int32 and layer.mlp.down_proj.qweight.dtype == torch.int32


def test_multimodal_gemma3_awq(tmp_path):
    """The language model of a Gemma3ForConditionalGeneration checkpoint in AWQ (the vision
    tower's tensors skipped with the rest of it)."""
    from test_gemma3_multimodal import _build

    src = _build(tmp_path / "float")
    qdir, refdir = quantize_checkpoint(src, tmp_path / "q", tmp_path / "ref", "awq", group_size=16)
    prompts = PARITY_PROMPTS
    from transformers import Gemma3ForConditionalGeneration

    model = Gemma3ForConditionalGeneration.from_pretrained(str(refdir), dtype=torch.float32).eval()
    ref = []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=10, min_new_tokens=10, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        ref.append((out.sequences[0, len(prompt):].tolist(), [s[0].float().log_softmax(-1) for s in out.logits]))
    llm, outputs = run(str(qdir), prompts, max_model_len=128)
    check_close(ref, outputs, prompts)
    assert layer0(llm).mlp.gate_up_proj.qweight.dtype == torch.int32


def test_fp8_per_token_gemma2(tmp_path):
    """With Gemma 2's own soft-caps (50 / 30): the test checkpoint's 3.0 squeezes the logits so
    flat that the fp8 activations' rounding reorders transformers' top-5."""
    from pagedlm.demo import build_tiny_checkpoint

    src = build_tiny_checkpoint(tmp_path / "float", "Gemma2ForCausalLM", seed=23, head_dim=16,
                                query_pre_attn_scalar=24, sliding_window=8, attn_logit_softcapping=50.0,
                                final_logit_softcapping=30.0, attn_implementation="eager")
    llm = assert_fp8_token_parity(str(src), tmp_path)
    assert layer0(llm).self_attn.o_proj.weight.dtype == FP8
