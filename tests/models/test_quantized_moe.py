"""Quantized MoE checkpoints: attention, dense and shared-expert layers run their linear
methods, the routed experts are dequantized while loading (``moe_experts``). Against
transformers running the dequantized weights (float32, CPU): greedy ids and top-k logprobs at
the parity tolerance for AWQ and GPTQ (Mixtral, Qwen2-MoE with a shared expert and a dense
layer, Qwen3-MoE), and at test_quant_parity's tolerance for fp8 with per-token activations;
OLMoE, PhiMoE and ERNIE 4.5 MoE in AWQ / GPTQ; a checkpoint missing part of an expert is refused
by name."""

from __future__ import annotations

import statistics

import pytest
import torch

from pagedlm import LLM

from quant_helpers import FP8, Scheme, write_quantized
from test_parity import PROMPTS, check_close, greedy, hf_reference, run
from test_quant_engine import ENGINE, ONLINE_FP8_MEAN_TOL, TEACHER_FORCED, _prompt_logprobs
from test_quant_parity import check_close as check_close_flips
from test_quant_parity import hf_reference as hf_reference_fake_quant
from wna16_helpers import quantize_checkpoint

VARIANTS = {
    "mixtral_awq": ("mixtral", "awq", dict(group_size=32)),
    "qwen2_moe_awq_g16": ("qwen2_moe", "awq", dict(group_size=16)),
    "qwen3_moe_gptq_act_order": ("qwen3_moe", "gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
    "qwen3_moe_gptq8": ("qwen3_moe", "gptq", dict(bits=8, group_size=32, sym=True)),
}


# The Qwen2-MoE test checkpoint with a shared expert 64 wide: the quantizers' packers take
# whole 32-column words (AutoAWQ's along the output, AutoGPTQ's along the input).
QWEN2_MOE = dict(num_hidden_layers=3, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=32,
                 shared_expert_intermediate_size=64, mlp_only_layers=[1], norm_topk_prob=False)


@pytest.fixture(scope="module")
def qwen2_moe_checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("qwen2_moe_q"), "Qwen2MoeForCausalLM", seed=5,
                                     **QWEN2_MOE))


def source(arch: str, checkpoint_factory, qwen2_moe_checkpoint) -> str:
    return qwen2_moe_checkpoint if arch == "qwen2_moe" else checkpoint_factory(arch)


@pytest.fixture(scope="module")
def round2_checkpoint(tmp_path_factory):
    from models.arch_parity_helpers import checkpoint_getter
    from models.test_parity_archs_moe_round2 import CHECKPOINTS

    return checkpoint_getter(tmp_path_factory, CHECKPOINTS, 600)


@pytest.mark.parametrize("fmt", ["awq", "block_fp8"])
def test_glm4_moe(round2_checkpoint, tmp_path, fmt):
    """GLM-4.5's layout (a dense first layer, a shared expert, q / k / v biases) in AWQ and in
    the block-wise fp8 of its own FP8 release."""
    from quant_helpers import write_block_fp8

    if fmt == "awq":
        qdir, refdir = quantize_checkpoint(round2_checkpoint("glm4_moe"), tmp_path / "q", tmp_path / "ref", "awq",
                                           group_size=32)
    else:
        qdir, refdir = tmp_path / "q", tmp_path / "ref"
        write_block_fp8(round2_checkpoint("glm4_moe"), qdir, refdir, (16, 16))
    prompts = PROMPTS[:4]
    ref = hf_reference(str(refdir), prompts, 10)
    llm, outputs = run(str(qdir), prompts, max_model_len=128)
    check_close(ref, outputs, prompts)
    model = llm.llm_engine.engine_core.runner.model.model
    assert model.layers[1].mlp.experts.w13_weight.dtype == torch.float32
    assert type(model.layers[1].mlp.shared_experts.down_proj.quant_method).__name__ != "UnquantizedLinearMethod"


@pytest.mark.parametrize("name,fmt,options", [
    ("granitemoeshared", "awq", dict(group_size=16)),
    ("olmoe", "awq", dict(group_size=16)),
    ("phimoe", "gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
    ("ernie4_5_moe", "awq", dict(group_size=16)),
])
def test_more_moe_families(round2_checkpoint, tmp_path, name, fmt, options):
    """GraniteMoeShared (its shared MLP's fused input_linear split per part; the 3-D experts stay
    float, as the quantizers leave them), OLMoE (whole-projection q / k norms, clip_qkv), PhiMoE
    (LayerNorms, sparsemixer routing, biases) and ERNIE 4.5 MoE (a dense layer, two shared
    experts, biases everywhere)."""
    from quant_parity_helpers import assert_wna16_parity

    llm = assert_wna16_parity(round2_checkpoint(name), tmp_path, fmt, **options)
    experts, qkv = experts_and_attention(llm)
    assert qkv.qweight.dtype == torch.int32 and experts.w13_weight.dtype == torch.float32
    shared = getattr(llm.llm_engine.engine_core.runner.model.model.layers[0], "shared_mlp", None)
    assert shared is None or shared.gate_up_proj.qweight.dtype == torch.int32


def test_bitsandbytes_moe(tmp_path):
    """bitsandbytes NF4 with double quantization (as unsloth's ``*-bnb-4bit`` MoE exports):
    every expert's packed codes, absmax and quant state through the format's method."""
    from bnb_helpers import write_bnb_checkpoint

    from pagedlm.demo import build_tiny_checkpoint

    # 64-wide expert inputs and outputs: whole bitsandbytes blocks along every row
    src = build_tiny_checkpoint(tmp_path / "float", "Qwen3MoeForCausalLM", seed=9,
                                **{**QWEN3_MOE_BNB, "moe_intermediate_size": 64})
    write_bnb_checkpoint(str(src), tmp_path / "q", tmp_path / "ref", "nf4", True)
    prompts = PROMPTS[:4]
    ref = hf_reference(str(tmp_path / "ref"), prompts, 10)
    llm, outputs = run(str(tmp_path / "q"), prompts, max_model_len=128)
    check_close(ref, outputs, prompts)
    experts, qkv = experts_and_attention(llm)
    assert qkv.weight.dtype == torch.uint8 and experts.w13_weight.dtype == torch.float32


QWEN3_MOE_BNB = dict(head_dim=16, num_experts=8, num_experts_per_tok=3, norm_topk_prob=True)


def experts_and_attention(llm: LLM):
    """The first MoE layer's experts and its attention's qkv_proj."""
    layers = llm.llm_engine.engine_core.runner.model.model.layers
    layer = next(layer for layer in layers if hasattr(getattr(layer, layer.ffn_name), "experts"))
    return getattr(layer, layer.ffn_name).experts, layer.self_attn.qkv_proj


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_wna16_moe_matches_transformers_on_dequantized_weights(checkpoint_factory, qwen2_moe_checkpoint, tmp_path,
                                                              variant):
    arch, fmt, options = VARIANTS[variant]
    qdir, refdir = quantize_checkpoint(source(arch, checkpoint_factory, qwen2_moe_checkpoint), tmp_path / "q",
                                       tmp_path / "ref", fmt, **options)
    prompts = PROMPTS[:4]
    ref = hf_reference(str(refdir), prompts, 10)
    llm, outputs = run(str(qdir), prompts, max_model_len=128, enable_prefix_caching=True)
    check_close(ref, outputs, prompts)
    experts, qkv = experts_and_attention(llm)
    assert qkv.qweight.dtype == torch.int32  # attention runs the codes
    assert experts.w13_weight.dtype == torch.float32  # the experts their dequantized values


def test_fp8_moe_with_per_token_activations(qwen2_moe_checkpoint, tmp_path):
    scheme = Scheme("compressed-tensors", FP8, per_channel=True, activations="token")
    qdir, oracle = tmp_path / "q", tmp_path / "oracle"
    write_quantized(qwen2_moe_checkpoint, qdir, oracle, scheme, PROMPTS)
    ref = hf_reference_fake_quant(str(oracle), scheme, {})
    llm = LLM(str(qdir), device="cpu", max_model_len=128)
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False)
    check_close_flips(ref, outputs, PROMPTS)
    experts, qkv = experts_and_attention(llm)
    assert qkv.weight.dtype == FP8 and experts.w13_weight.dtype == torch.float32


def test_an_expert_missing_a_tensor_is_refused(checkpoint_factory, tmp_path):
    from safetensors.torch import load_file, save_file

    qdir, _ = quantize_checkpoint(checkpoint_factory("qwen3_moe"), tmp_path / "q", tmp_path / "ref", "awq",
                                  group_size=32)
    tensors = load_file(str(qdir / "model.safetensors"))
    victim = "model.layers.1.mlp.experts.2.up_proj.qzeros"
    del tensors[victim]
    save_file(tensors, str(qdir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(Exception) as info:
        LLM(str(qdir), device="cpu", max_model_len=64)
    assert "experts.2.up_proj" in str(info.value) and "qzeros" in str(info.value)


def test_online_fp8_quantizes_the_linear_layers_and_keeps_the_experts(checkpoint_factory):
    """--quantization fp8 on a float MoE checkpoint: attention in fp8, the (float) experts as
    they are; teacher-forced prompt logprobs within test_quant_engine's online-fp8 tolerance
    of the float model's."""
    path = checkpoint_factory("qwen3_moe")
    online = LLM(path, quantization="fp8", **ENGINE)
    experts, qkv = experts_and_attention(online)
    assert qkv.weight.dtype == FP8 and experts.w13_weight.dtype == torch.float32
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    quant = _prompt_logprobs(online.generate(prompts, TEACHER_FORCED, use_tqdm=False))
    ref = _prompt_logprobs(LLM(path, **ENGINE).generate(prompts, TEACHER_FORCED, use_tqdm=False))
    errors = [abs(a - b) for a, b in zip(quant, ref, strict=True)]
    assert 0 < statistics.mean(errors) < ONLINE_FP8_MEAN_TOL


def test_moe_wna16_names_the_checkpoint_format(checkpoint_factory, tmp_path):
    """vLLM's ``--quantization moe_wna16`` (its MoE kernel for AWQ / GPTQ checkpoints) runs the
    checkpoint's own format; a checkpoint of another kind refuses it."""
    from pagedlm.layers.quantization import QuantizationError

    qdir, _ = quantize_checkpoint(checkpoint_factory("qwen3_moe"), tmp_path / "q", tmp_path / "ref", "awq",
                                  group_size=32)
    llm = LLM(str(qdir), device="cpu", max_model_len=128, quantization="moe_wna16")
    assert llm.llm_engine.config.model_config.quantization == "awq"
    with pytest.raises(QuantizationError, match="moe_wna16 runs awq / gptq checkpoints; this one is unquantized"):
        LLM(checkpoint_factory("qwen3_moe"), device="cpu", max_model_len=128, quantization="moe_wna16")
