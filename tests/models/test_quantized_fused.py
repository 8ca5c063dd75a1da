"""Quantized checkpoints whose q / k / v and gate / up projections are fused on disk (Phi-3's
qkv_proj and gate_up_proj, GLM's gate_up_proj): each fused tensor is quantized as one layer, as
the quantizers write these models, and ``phi3.split_fused`` cuts every format's tensors into
the parts the fused parameters load. Against transformers running the dequantized weights
(float32, CPU): greedy ids and top-k logprobs at the parity tolerance (AWQ; GPTQ with act order,
whose g_idx goes whole to every part; block-wise fp8, whose scales split in blocks), and at
test_quant_parity's tolerance for fp8 with a per-tensor weight scale and a static input scale
(one value of the fused tensor for every part). A tensor that cannot be split is refused by
name."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM
from pagedlm.layers.quantization import QuantizationError

from quant_helpers import FP8, Scheme, write_quantized
from quant_parity_helpers import assert_block_fp8_parity, assert_wna16_parity
from test_parity import PROMPTS, greedy
from test_quant_parity import check_close as check_close_flips
from test_quant_parity import hf_reference as hf_reference_fake_quant
from wna16_helpers import quantize_checkpoint


@pytest.fixture(scope="module")
def glm_checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("glm_q"), "GlmForCausalLM", seed=17, head_dim=32,
                                     pad_token_id=0))


def qkv_of(llm: LLM):
    return llm.llm_engine.engine_core.runner.model.model.layers[0].self_attn.qkv_proj


@pytest.mark.parametrize("arch,fmt,options", [
    ("phi3", "awq", dict(group_size=16)),
    ("phi3", "gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
    ("glm", "awq", dict(group_size=32)),
])
def test_wna16_matches_transformers_on_dequantized_weights(checkpoint_factory, glm_checkpoint, tmp_path, arch, fmt,
                                                          options):
    llm = assert_wna16_parity(glm_checkpoint if arch == "glm" else checkpoint_factory(arch), tmp_path, fmt, **options)
    assert qkv_of(llm).qweight.dtype == torch.int32
    mlp = llm.llm_engine.engine_core.runner.model.model.layers[0].mlp
    assert mlp.gate_up_proj.qweight.dtype == torch.int32


def test_block_fp8_phi3(checkpoint_factory, tmp_path):
    assert qkv_of(assert_block_fp8_parity(checkpoint_factory("phi3"), tmp_path)).weight.dtype == FP8


def test_fp8_per_tensor_static_phi3(seeded_checkpoint, tmp_path):
    """A fixed seed: how many activations sit on an fp8 rounding boundary depends on the weights."""
    scheme = Scheme("fp8", FP8, per_channel=False, activations="static")
    qdir, oracle = tmp_path / "q", tmp_path / "oracle"
    input_scales = write_quantized(seeded_checkpoint("phi3", 3), qdir, oracle, scheme, PROMPTS)
    ref = hf_reference_fake_quant(str(oracle), scheme, input_scales)
    llm = LLM(str(qdir), device="cpu", max_model_len=128)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False)
    check_close_flips(ref, outputs, PROMPTS)
    qkv = qkv_of(llm)
    assert qkv.weight.dtype == FP8
    # the fused tensor's one scale, on every part
    assert torch.equal(qkv.weight_scale, qkv.weight_scale[:1].expand_as(qkv.weight_scale))


def test_a_tensor_that_does_not_split_is_refused(checkpoint_factory, tmp_path):
    from safetensors.torch import load_file, save_file

    qdir, _ = quantize_checkpoint(checkpoint_factory("phi3"), tmp_path / "q", tmp_path / "ref", "awq", group_size=16)
    tensors = load_file(str(qdir / "model.safetensors"))
    victim = "model.layers.0.self_attn.qkv_proj.scales"
    tensors[victim] = tensors[victim][:, :-8].contiguous()
    save_file(tensors, str(qdir / "model.safetensors"))
    with pytest.raises(QuantizationError, match=r"qkv_proj\.scales.*cannot be split"):
        LLM(str(qdir), device="cpu", max_model_len=128)
