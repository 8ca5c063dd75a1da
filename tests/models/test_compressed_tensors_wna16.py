"""compressed-tensors ``pack-quantized`` checkpoints (llm-compressor's W4A16 / W8A16).

The packing against known vectors derived from the published compressor
(``PackedQuantizationCompressor`` / ``pack_to_int32``: the signed code plus 2**(bits-1), fields
sequential from the low bits; its docstring's 8-bit example [1, 2] -> 33409); whole models
written in the format (the tests' port of that packer, ``wna16_helpers.ct_quantize_linear``)
against transformers running the dequantized weights (float32, CPU) at the parity tolerance:
4-bit symmetric groups, 4-bit groups with zero points and act order, 8-bit per channel, and a
Qwen3-MoE whose experts are dequantized while loading; what the format refuses."""

from __future__ import annotations

import json

import pytest
import torch

from pagedlm import LLM
from pagedlm.layers.quantization import QuantizationError
from pagedlm.layers.quantization.wna16 import unpack_along_cols, unpack_along_rows

from quant_parity_helpers import assert_wna16_parity
from wna16_helpers import ct_pack, quantize_checkpoint


def test_known_vectors():
    # the compressor's docstring: 8-bit [1, 2] -> unsigned [129, 130, 0, 0] -> 33409
    assert ct_pack(torch.tensor([[1, 2]]) + 128, 8, 1).tolist() == [[33409]]
    # 4-bit codes -8 .. -1 -> unsigned 0 .. 7, field i at bits 4i: 0x76543210
    word = ct_pack(torch.arange(-8, 0)[None] + 8, 4, 1)
    assert word.tolist() == [[0x76543210]]
    assert unpack_along_cols(word, 4).tolist() == [list(range(8))]
    # zero points packed along the output dim: column c of word row r holds row 8r + i
    zp = torch.arange(16).reshape(16, 1) % 16
    packed = ct_pack(zp, 4, 0)
    assert packed.shape == (2, 1) and unpack_along_rows(packed, 4).reshape(-1).tolist() == list(range(16))


@pytest.mark.parametrize("options", [
    dict(bits=4, group_size=16, sym=True),
    dict(bits=4, group_size=16, sym=False, desc_act=True),
    dict(bits=8, group_size=-1, sym=True),
], ids=["w4a16-sym-g16", "w4a16-asym-actorder", "w8a16-channel"])
def test_matches_transformers_on_dequantized_weights(llama_checkpoint, tmp_path, options):
    llm = assert_wna16_parity(llama_checkpoint, tmp_path, "compressed-tensors", **options)
    qkv = llm.llm_engine.engine_core.runner.model.model.layers[0].self_attn.qkv_proj
    assert type(qkv.quant_method).__name__ == "CompressedTensorsWNA16Method" and qkv.qweight.dtype == torch.int32


def test_moe_experts(checkpoint_factory, tmp_path):
    llm = assert_wna16_parity(checkpoint_factory("qwen3_moe"), tmp_path, "compressed-tensors", bits=4, group_size=16,
                              sym=False)
    moe = llm.llm_engine.engine_core.runner.model.model.layers[0].mlp
    assert moe.experts.w13_weight.dtype == torch.float32


def _with_weights(qdir, **weights) -> None:
    path = qdir / "config.json"
    config = json.loads(path.read_text())
    group = config["quantization_config"]["config_groups"]["group_0"]
    group.update(weights.pop("group", {}))
    group["weights"].update(weights)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("change,match", [
    (dict(group={"input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True}}), "W4A8"),
    (dict(type="float"), "pack-quantized float4"),
    (dict(num_bits=2), "pack-quantized int2"),
    (dict(strategy="block"), "strategy 'block'"),
])
def test_refused(llama_checkpoint, tmp_path, change, match):
    qdir, _ = quantize_checkpoint(llama_checkpoint, tmp_path / "q", tmp_path / "ref", "compressed-tensors", bits=4,
                                  group_size=16)
    _with_weights(qdir, **change)
    with pytest.raises(QuantizationError, match=match):
        LLM(str(qdir), device="cpu", max_model_len=128)


def test_act_order_kinds():
    """Only ``actorder: group`` stores weight_g_idx ("weight" quantizes in activation order but
    keeps the groups contiguous)."""
    from pagedlm.layers.quantization.compressed_tensors import parse_scheme

    def scheme(actorder):
        weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128,
                   "actorder": actorder}
        return parse_scheme({"weights": weights}, "pack-quantized")

    assert scheme("group").actorder and not scheme("weight").actorder and not scheme(None).actorder
    assert scheme(None).group_size == 128 and scheme(None).bits == 4


def test_mixed_precision_groups():
    """A ``mixed-precision`` checkpoint: each config group says its own format (fp8 attention,
    packed int4 MLP), and each layer takes its group's method."""
    from pagedlm.layers.quantization.compressed_tensors import CompressedTensorsConfig

    fp8 = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel", "dynamic": False}
    int4 = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 128}
    cfg = CompressedTensorsConfig.from_config({"quant_method": "compressed-tensors", "format": "mixed-precision",
                                               "ignore": ["lm_head"], "config_groups": {
        "attn": {"format": "float-quantized", "targets": ["re:.*self_attn.*"], "weights": fp8,
                 "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True}},
        "mlp": {"format": "pack-quantized", "targets": ["re:.*mlp.*"], "weights": int4}}})
    qkv = cfg.get_quant_method(None, "model.layers.0.self_attn.qkv_proj")
    down = cfg.get_quant_method(None, "model.layers.0.mlp.down_proj")
    assert type(qkv).__name__ == "W8LinearMethod" and qkv.scheme.activations == "token"
    assert type(down).__name__ == "CompressedTensorsWNA16Method" and not down.scheme.symmetric
    assert cfg.get_quant_method(None, "lm_head") is None
    assert not cfg.skip_checkpoint_tensor("model.layers.0.mlp.down_proj.weight_zero_point")  # packed, asymmetric
    assert cfg.skip_checkpoint_tensor("model.layers.0.self_attn.q_proj.weight_zero_point")
    with pytest.raises(QuantizationError, match="format 'mixed-precision'"):  # a group without its own format
        CompressedTensorsConfig.from_config({"quant_method": "compressed-tensors", "format": "mixed-precision",
                                             "config_groups": {"g": {"targets": ["Linear"], "weights": fp8}}})
