"""fp8 checkpoints in the formats of other exporters: ``fbgemm_fp8`` (transformers'
FbgemmFp8Config, Meta's Llama 3.1 405B FP8: per-channel weights, per-token activations clamped
to ``input_scale_ub``) and NVIDIA ModelOpt (``quant_method: modelopt``, ``quant_algo`` FP8 with
static per-tensor activation scales, or FP8_PER_CHANNEL_PER_TOKEN). Written by the test in the
formats' tensor names, against transformers running the dequantized weights with the
activations fake-quantized the same way (test_quant_parity's tolerance); the bound is set low
enough that it clamps. Which layers ModelOpt's ``exclude_modules`` (names and ``*`` wildcards)
leaves unquantized; what is refused."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pagedlm import LLM
from pagedlm.layers.quantization import QuantizationError
from pagedlm.layers.quantization.modelopt import ModelOptConfig

from quant_helpers import FP8, Scheme, write_quantized
from test_parity import PROMPTS, greedy
from test_quant_parity import ENGINE, check_close
from test_quant_parity import hf_reference as hf_reference_fake_quant

UB = 0.5  # below the tiny model's largest activations


def _rewrite(qdir, quantization_config: dict, extra_tensors=None) -> None:
    path = qdir / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"] = quantization_config
    path.write_text(json.dumps(config))
    if extra_tensors is not None:
        tensors = load_file(str(qdir / "model.safetensors"))
        tensors.update(extra_tensors(tensors))
        save_file(tensors, str(qdir / "model.safetensors"))


@pytest.fixture(scope="module")
def llama(seeded_checkpoint) -> str:
    """test_quant_parity's llama (a fixed seed): how many activations sit on an fp8 rounding
    boundary depends on the weights."""
    return seeded_checkpoint("llama", 1)


def _qkv(llm: LLM):
    return llm.llm_engine.engine_core.runner.model.model.layers[0].self_attn.qkv_proj


def test_fbgemm_fp8(llama, tmp_path):
    scheme = Scheme("compressed-tensors", FP8, per_channel=True, activations="token")
    qdir, oracle = tmp_path / "q", tmp_path / "oracle"
    write_quantized(llama, qdir, oracle, scheme, PROMPTS)
    _rewrite(qdir, {"quant_method": "fbgemm_fp8", "activation_scale_ub": 1200.0, "modules_to_not_convert": ["lm_head"]},
             lambda t: {k.replace(".weight_scale", ".input_scale_ub"): torch.tensor([UB]) for k in t
                        if k.endswith(".weight_scale")})
    llm = LLM(str(qdir), **ENGINE)
    assert llm.llm_engine.config.model_config.quantization == "fbgemm_fp8"
    qkv = _qkv(llm)
    assert qkv.weight.dtype == FP8 and qkv.input_scale_ub.item() == UB  # the layer's own bound
    assert qkv.quant_method.input_codes_dtype(qkv) is None  # the norm does not quantize for it
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False)
    check_close(hf_reference_fake_quant(str(oracle), scheme, {}, clamp=UB), outputs, PROMPTS)


@pytest.mark.parametrize("algo,scheme", [
    ("FP8", Scheme("fp8", FP8, per_channel=False, activations="static")),
    ("FP8_PER_CHANNEL_PER_TOKEN", Scheme("compressed-tensors", FP8, per_channel=True, activations="token")),
])
def test_modelopt(llama, tmp_path, algo, scheme):
    qdir, oracle = tmp_path / "q", tmp_path / "oracle"
    input_scales = write_quantized(llama, qdir, oracle, scheme, PROMPTS)
    _rewrite(qdir, {"quant_method": "modelopt", "quant_algo": algo, "kv_cache_quant_algo": None,
                    "exclude_modules": ["lm_head"]})
    llm = LLM(str(qdir), **ENGINE)
    assert llm.llm_engine.config.model_config.quantization == "modelopt" and _qkv(llm).weight.dtype == FP8
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False)
    check_close(hf_reference_fake_quant(str(oracle), scheme, input_scales), outputs, PROMPTS)


def test_modelopt_exclusions_and_refusals():
    cfg = ModelOptConfig.from_config({"quantization": {"quant_algo": "FP8", "exclude_modules": [
        "*.mlp.down_proj", "model.layers.0.self_attn.o_proj", "model.layers.1.self_attn.q_proj"]}})
    assert cfg.get_quant_method(None, "model.layers.3.mlp.down_proj") is None
    assert cfg.get_quant_method(None, "model.layers.0.self_attn.o_proj") is None
    assert cfg.get_quant_method(None, "model.layers.2.self_attn.o_proj") is not None
    assert cfg.get_quant_method(None, "lm_head") is None
    assert cfg.get_quant_method(None, "model.layers.0.self_attn.qkv_proj") is not None
    with pytest.raises(QuantizationError, match="some of"):  # q excluded, k and v not
        cfg.get_quant_method(None, "model.layers.1.self_attn.qkv_proj")
    with pytest.raises(QuantizationError, match="quant_algo 'NVFP4' is not supported"):
        ModelOptConfig.from_config({"quant_method": "modelopt", "quant_algo": "NVFP4"})


def test_modelopt_hf_quant_config_file(llama, tmp_path):
    """ModelOpt's older exports: config.json without quantization_config, the quantization in
    hf_quant_config.json beside it."""
    scheme = Scheme("fp8", FP8, per_channel=False, activations="static")
    qdir, oracle = tmp_path / "q", tmp_path / "oracle"
    input_scales = write_quantized(llama, qdir, oracle, scheme, PROMPTS)
    config = json.loads((qdir / "config.json").read_text())
    del config["quantization_config"]
    (qdir / "config.json").write_text(json.dumps(config))
    (qdir / "hf_quant_config.json").write_text(json.dumps({
        "producer": {"name": "modelopt", "version": "0.19.0"},
        "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": None, "exclude_modules": ["lm_head"]}}))
    llm = LLM(str(qdir), **ENGINE)
    assert llm.llm_engine.config.model_config.quantization == "modelopt" and _qkv(llm).weight.dtype == FP8
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False)
    check_close(hf_reference_fake_quant(str(oracle), scheme, input_scales), outputs, PROMPTS)
    (qdir / "hf_quant_config.json").write_text(json.dumps({"producer": {"name": "modelopt"}}))
    with pytest.raises(ValueError, match="no 'quantization' object"):
        LLM(str(qdir), **ENGINE)


def test_ptpc_fp8_is_online_fp8(llama, tmp_path):
    """vLLM's ``--quantization ptpc_fp8`` (per-channel weights, per-token activations, quantized
    while loading) is pagedlm's online fp8; a checkpoint already quantized refuses it."""
    from pagedlm.layers.quantization.w8a8 import W8LinearMethod

    llm = LLM(llama, quantization="ptpc_fp8", **ENGINE)
    assert llm.llm_engine.config.model_config.quantization == "fp8"
    method = _qkv(llm).quant_method
    assert isinstance(method, W8LinearMethod) and method.scheme.online and method.scheme.activations == "token"
    qdir, oracle = tmp_path / "q", tmp_path / "oracle"
    write_quantized(llama, qdir, oracle, Scheme("fp8", FP8, per_channel=False, activations="static"), PROMPTS)
    with pytest.raises(QuantizationError, match="already quantized"):
        LLM(str(qdir), quantization="ptpc_fp8", **ENGINE)


def _quark_config(dtype: str, weight_qscheme: str, input_dynamic: bool | None, **extra) -> dict:
    weight = {"dtype": dtype, "qscheme": weight_qscheme, "is_dynamic": False, "symmetric": True, "ch_axis": 0}
    inputs = None if input_dynamic is None else {"dtype": dtype, "qscheme": "per_tensor", "is_dynamic": input_dynamic,
                                                  "symmetric": True}
    return {"quant_method": "quark", "export": {"weight_format": "real_quantized", "pack_method": "reorder"},
            "global_quant_config": {"weight": weight, "input_tensors": inputs, "output_tensors": None, "bias": None},
            "layer_quant_config": {}, "exclude": ["lm_head"], **extra}


@pytest.mark.parametrize("dtype,scheme", [
    ("fp8_e4m3", Scheme("fp8", FP8, per_channel=False, activations="static")),
    ("int8", Scheme("compressed-tensors", torch.int8, per_channel=False, activations="static")),
])
def test_quark(llama, tmp_path, dtype, scheme):
    """AMD Quark: per-tensor 8-bit weights with static per-tensor activation scales."""
    qdir, oracle = tmp_path / "q", tmp_path / "oracle"
    input_scales = write_quantized(llama, qdir, oracle, scheme, PROMPTS)
    _rewrite(qdir, _quark_config(dtype, "per_tensor", False))
    llm = LLM(str(qdir), **ENGINE)
    assert llm.llm_engine.config.model_config.quantization == "quark" and _qkv(llm).weight.dtype == scheme.dtype
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], greedy(), use_tqdm=False)
    check_close(hf_reference_fake_quant(str(oracle), scheme, input_scales), outputs, PROMPTS)


def test_quark_layer_overrides_exclusions_and_refusals():
    from pagedlm.layers.quantization.quark import QuarkConfig

    cfg = QuarkConfig.from_config(_quark_config("fp8_e4m3", "per_channel", True, exclude=["lm_head", "*.mlp.down_proj"],
                                                layer_quant_config={"*.self_attn.o_proj": {"weight": {
                                                    "dtype": "int8", "qscheme": "per_tensor", "is_dynamic": False}}}))
    qkv = cfg.get_quant_method(None, "model.layers.0.self_attn.qkv_proj")
    assert qkv.scheme.weight_dtype == FP8 and qkv.scheme.weight_per_channel and qkv.scheme.activations == "tensor"
    o = cfg.get_quant_method(None, "model.layers.0.self_attn.o_proj")
    assert o.scheme.weight_dtype == torch.int8 and o.scheme.activations is None  # the override: W8A16
    assert cfg.get_quant_method(None, "model.layers.2.mlp.down_proj") is None
    assert cfg.get_quant_method(None, "lm_head") is None
    for bad, match in ((_quark_config("fp4", "per_group", None), "'fp4' weights"),
                       (_quark_config("int8", "per_tensor", True), "dynamic int8 activations"),
                       (_quark_config("fp8_e4m3", "per_group", False), "weight qscheme 'per_group'")):
        with pytest.raises(QuantizationError, match=match):
            QuarkConfig.from_config(bad)
