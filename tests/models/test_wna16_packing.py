"""AWQ / GPTQ unpacking against the quantizers' published conventions.

Known vectors are derived by hand from the reference packers (AutoAWQ's
``WQLinear_GEMM.from_linear`` order map, AutoGPTQ's ``QuantLinear.pack``); the layer tests
load tensors written by ports of those packers (tests/models/wna16_helpers.py) and compare
the layer's output with the quantizers' own torch dequantizers.
"""

from __future__ import annotations

import pytest
import torch

from pagedlm.kernels import wna16_reference
from pagedlm.layers.quantization import QuantizationError, get_quantization_config
from pagedlm.layers.quantization.awq import AWQ_ORDER, AWQConfig
from pagedlm.layers.quantization.gptq import GPTQConfig
from pagedlm.layers.quantization.wna16 import input_order, unpack_along_cols, unpack_along_rows
from pagedlm.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear

import wna16_helpers as ref  # noqa: E402 - tests/models is on sys.path (rootdir import mode)


def _word(value: int) -> torch.Tensor:
    """An unsigned 32-bit pattern as the int32 the checkpoints store."""
    return torch.tensor([[value - (1 << 32) if value >= 1 << 31 else value]], dtype=torch.int32)


def test_known_vectors_awq_order():
    # from_linear: field i of a word holds output column AWQ_ORDER[i]. Codes 0..7 for
    # columns 0..7 put 0,2,4,6,1,3,5,7 in fields 0..7: 0x75316420.
    assert unpack_along_cols(_word(0x75316420), 4, AWQ_ORDER).tolist() == [list(range(8))]
    # (The packers size their outputs as out // 32 * bits words: 32 columns, four words.)
    packed = ref.awq_pack_gemm((torch.arange(32.0) % 8)[:, None], torch.ones(1, 32), torch.zeros(1, 32),
                               group_size=1)
    assert packed["qweight"].flatten().tolist() == [0x75316420] * 4
    # Column 7 = 15 lands in the top field: the word is negative as int32.
    assert unpack_along_cols(_word(0xF0000000), 4, AWQ_ORDER).tolist() == [[0] * 7 + [15]]
    assert unpack_along_cols(_word(0x0000000F), 4, AWQ_ORDER).tolist() == [[15] + [0] * 7]
    assert unpack_along_cols(_word(0x000000F0), 4, AWQ_ORDER).tolist() == [[0, 0, 15] + [0] * 5]


def test_known_vectors_gptq_sequential():
    # QuantLinear.pack: input j of a row of 8 sits at bits 4 * j (4-bit), 8 * j (8-bit).
    assert unpack_along_rows(_word(0x76543210), 4).flatten().tolist() == list(range(8))
    assert unpack_along_rows(_word(0xFF807F01), 8).flatten().tolist() == [1, 127, 128, 255]
    assert unpack_along_cols(_word(0x76543210), 4).tolist() == [list(range(8))]
    # 32 x 32, w[n, k] = k % 8, scale 1, zero 8: every input k is stored as
    # round((k + 8 * 1) / 1) = k + 8, and the zero 8 as 8 - 1 = 7 in each field.
    packed = ref.gptq_pack((torch.arange(32.0) % 8).repeat(32, 1), torch.ones(32, 1), torch.full((32, 1), 8.0),
                           torch.zeros(32, dtype=torch.int32), bits=4)
    assert packed["qweight"].flatten().tolist() == [0xFEDCBA98 - (1 << 32)] * (4 * 32)
    assert packed["qzeros"].flatten().tolist() == [0x77777777] * 4


def test_internal_pack_roundtrip():
    for bits in (4, 8):
        codes = torch.randint(0, 2**bits, (64, 24))
        assert torch.equal(wna16_reference.unpack_codes(wna16_reference.pack_codes(codes, bits), bits), codes)
        for interleave in (2, 16):
            packed = wna16_reference.pack_codes(torch.cat([codes] * 4), bits, interleave)
            assert torch.equal(wna16_reference.unpack_codes(packed, bits, interleave), torch.cat([codes] * 4))


def test_internal_layout_interleaves_rows():
    """Field j of packed row r holds input (r // R) * R * pack + j * R + r % R: the kernels
    read one [R, N] tile and take field j as the contiguous inputs kbase + j*R ... ."""
    assert wna16_reference.interleave_rows(4096, 128, 4) == 16  # Llama: 128 inputs per tile
    assert wna16_reference.interleave_rows(14336, 128, 8) == 16
    assert wna16_reference.interleave_rows(96, 96, 4) == 4  # 96 = 4 * 8 * 3: no 8- or 16-row tile
    assert wna16_reference.interleave_rows(256, 8, 4) == 8  # a sub-tile may not straddle groups
    assert wna16_reference.interleave_rows(24, 24, 8) == 2
    assert wna16_reference.interleave_rows(8, 8, 4) == 1  # the plain sequential packing
    codes = torch.arange(256)[:, None] % 16  # input k has code k % 16 (R = 16 at 4 bits: 2 tiles)
    packed = wna16_reference.pack_internal(codes, 4, 128)
    fields = [[(int(word) >> (4 * j)) & 15 for j in range(8)] for word in packed[:, 0]]
    # Row 0: inputs 0, 16, ..., 112 -> codes all 0; row 1: inputs 1, 17, ... -> all 1; row 16
    # starts the second tile (inputs 128, 144, ...).
    assert fields[0] == [0] * 8 and fields[1] == [1] * 8 and fields[16] == [0] * 8
    codes = torch.arange(256)[:, None] // 16 % 16  # now the code names the 16-row block
    fields = [[(int(word) >> (4 * j)) & 15 for j in range(8)] for word in
              wna16_reference.pack_internal(codes, 4, 128)[:, 0]]
    assert fields[0] == list(range(8)) and fields[15] == list(range(8)) and fields[16] == list(range(8, 16))


def _load(layer, tensors: dict[str, torch.Tensor], shard_id=None) -> None:
    for name, tensor in tensors.items():
        param = getattr(layer, name)
        param.weight_loader(param, tensor, shard_id)


def _qkv_case(make_config, quantize, group_size):
    torch.manual_seed(0)
    layer = QKVParallelLinear(64, 16, 4, 2, quant_config=make_config, prefix="model.layers.0.self_attn.qkv_proj")
    dense_parts = []
    for shard_id, out in (("q", 64), ("k", 32), ("v", 32)):
        tensors, dense = quantize(torch.randn(out, 64))
        _load(layer, tensors, shard_id)
        dense_parts.append(dense)
    layer.quant_method.process_weights_after_loading(layer)
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), x @ torch.cat(dense_parts).t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group_size", [32, -1])
def test_awq_qkv_layer_matches_autoawq_dequantizer(group_size):
    config = AWQConfig.from_config({"quant_method": "awq", "bits": 4, "group_size": group_size, "version": "gemm",
                                    "zero_point": True})
    _qkv_case(config, lambda w: ref.awq_quantize_linear(w, group_size), group_size)


@pytest.mark.parametrize("bits,sym,desc_act,fmt", [
    (4, True, False, "gptq"), (4, False, True, "gptq"), (8, False, False, "gptq_v2"), (8, True, True, "gptq"),
])
def test_gptq_qkv_layer_matches_autogptq_dequantizer(bits, sym, desc_act, fmt):
    config = GPTQConfig.from_config({"quant_method": "gptq", "bits": bits, "group_size": 16, "sym": sym,
                                     "desc_act": desc_act, "checkpoint_format": fmt})
    _qkv_case(config, lambda w: ref.gptq_quantize_linear(w, bits, 16, sym, desc_act, fmt == "gptq_v2", seed=3), 16)


def test_gptq_v1_zero_offset_is_applied():
    """Sym 4-bit zeros are 8, stored as 0x77777777 in v1 and 0x88888888 in v2: reading v1 as
    v2 (or the reverse) shifts every weight by one scale, which this catches."""
    torch.manual_seed(1)
    w = torch.randn(64, 32)
    for v2 in (False, True):
        tensors, dense = ref.gptq_quantize_linear(w, 4, 32, sym=True, desc_act=False, v2=v2, seed=0)
        assert tensors["qzeros"].flatten().tolist() == [0x88888888 - (1 << 32) if v2 else 0x77777777] * 8
        for fmt in ("gptq", "gptq_v2"):
            config = GPTQConfig.from_config({"quant_method": "gptq", "bits": 4, "group_size": 32, "sym": True,
                                             "checkpoint_format": fmt})
            layer = MergedColumnParallelLinear(32, [32, 32], quant_config=config, prefix="mlp.gate_up_proj")
            _load(layer, {k: v[:, :4] if k == "qzeros" else (v[:, :32] if k != "g_idx" else v)
                          for k, v in tensors.items()}, 0)
            _load(layer, {k: v[:, 4:] if k == "qzeros" else (v[:, 32:] if k != "g_idx" else v)
                          for k, v in tensors.items()}, 1)
            layer.quant_method.process_weights_after_loading(layer)
            x = torch.randn(3, 32)
            err = (layer(x) - x @ dense.t()).abs().max().item()
            assert (err < 1e-4) == ((fmt == "gptq_v2") == v2), (v2, fmt, err)


def test_gptq_row_parallel_act_order_shard_keeps_global_groups():
    """A row-parallel shard of an act-order layer indexes any group: rows keep their group ids
    (the kernel's per-row path) and the output equals the shard of the dense product."""
    torch.manual_seed(2)
    w = torch.randn(32, 64)
    tensors, dense = ref.gptq_quantize_linear(w, 4, 16, sym=False, desc_act=True, v2=False, seed=5)
    config = GPTQConfig.from_config({"quant_method": "gptq", "bits": 4, "group_size": 16, "desc_act": True})
    layer = RowParallelLinear(64, 32, quant_config=config, prefix="mlp.down_proj", reduce_results=False)
    layer.tp_rank, layer.tp_size, layer.input_size_per_partition = 1, 2, 32  # rank 1 of 2, built by hand
    method = layer.quant_method
    for name in ("qweight", "qzeros", "scales", "g_idx"):
        delattr(layer, name)
    method.create_weights(layer, 32, [32], 64, 32, torch.float32, layer.weight_loader)
    _load(layer, tensors)
    assert layer.scales.shape == (4, 32)  # all groups on every rank
    method.process_weights_after_loading(layer)
    assert layer.wna16_row_groups is not None
    x = torch.randn(3, 32)
    torch.testing.assert_close(method.apply(layer, x), x @ dense[:, 32:].t(), rtol=1e-5, atol=1e-5)


def test_input_order():
    assert input_order(torch.arange(8) // 4, 4)[0] is None
    perm, row_groups, _ = input_order(torch.tensor([1, 0, 1, 0]), 2)
    assert perm.tolist() == [1, 3, 0, 2] and row_groups is None
    perm, row_groups, _ = input_order(torch.tensor([3, 0, 3, 1]), 2)
    assert row_groups.tolist() == [0, 1, 3, 3]


@pytest.mark.parametrize("cfg,match", [
    ({"quant_method": "awq", "bits": 3, "group_size": 128}, "3-bit"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"}, "gemv"),
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": False}, "zero_point"),
    ({"quant_method": "awq", "bits": 4, "group_size": 0}, "group size 0"),
    ({"quant_method": "awq", "bits": 4, "backend": "llm-awq"}, "llm-awq"),
    ({"quant_method": "gptq", "bits": 3, "group_size": 128}, "3-bit"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 0}, "group size 0"),
    ({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"}, "marlin"),
    ({"quant_method": "gptq", "bits": 4, "is_marlin_format": True}, "marlin"),
    ({"quant_method": "gptq", "bits": 4, "lm_head": True}, "lm_head"),
    ({"quant_method": "gptq", "bits": 4, "dynamic": {"-:.*": {}}}, "dynamic"),
])
def test_unsupported_configs_are_refused(cfg, match):
    with pytest.raises(QuantizationError, match=match):
        get_quantization_config(cfg["quant_method"]).from_config(cfg)


@pytest.mark.parametrize("name", ["awq", "gptq"])
def test_online_request_is_refused(name):
    with pytest.raises(QuantizationError, match="does not quantize"):
        get_quantization_config(name).from_config({})


def test_group_size_must_divide_the_shard():
    config = GPTQConfig.from_config({"quant_method": "gptq", "bits": 4, "group_size": 48})
    with pytest.raises(QuantizationError, match="not a multiple of group_size 48"):
        RowParallelLinear(64, 16, quant_config=config, prefix="mlp.down_proj")


def test_excluded_modules_stay_unquantized():
    awq = AWQConfig.from_config({"quant_method": "awq", "bits": 4, "group_size": 32,
                                 "modules_to_not_convert": ["self_attn"]})
    layer = QKVParallelLinear(64, 16, 4, 2, quant_config=awq, prefix="model.layers.0.self_attn.qkv_proj")
    assert hasattr(layer, "weight") and not hasattr(layer, "qweight")
    assert awq.get_quant_method(None, "lm_head") is None
    gptq = GPTQConfig.from_config({"quant_method": "gptq", "bits": 4, "group_size": 32,
                                   "modules_in_block_to_quantize": [["self_attn.q_proj", "self_attn.k_proj",
                                                                     "self_attn.v_proj"], ["mlp.down_proj"]]})
    assert gptq.get_quant_method(None, "model.layers.0.self_attn.qkv_proj") is not None
    assert gptq.get_quant_method(None, "model.layers.0.mlp.gate_up_proj") is None
    with pytest.raises(QuantizationError, match="fused"):
        GPTQConfig.from_config({"quant_method": "gptq", "bits": 4, "group_size": 32,
                                "modules_in_block_to_quantize": [["self_attn.q_proj"]]}
                               ).get_quant_method(None, "model.layers.0.self_attn.qkv_proj")


def test_reference_gemm_makes_nothing_on_the_host():
    """The reference GEMM (the GPU's path for float32 activations) allocates its index tensors
    on the weight's device: a CUDA graph capture forbids host-to-device copies. Run on the meta
    device, every tensor an op makes is a meta tensor."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class NoHostTensors(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                assert not (isinstance(t, torch.Tensor) and t.device.type == "cpu"), func
            return out

    k, n, group_size = 256, 32, 64
    assert wna16_reference.interleave_rows(k, group_size, 4) > 1  # the interleaved layout's row order
    meta = torch.device("meta")
    qweight = torch.empty(k // 8, n, dtype=torch.int32, device=meta)
    scales = torch.empty(k // group_size, n, device=meta)
    with NoHostTensors():
        y = wna16_reference.wna16_gemm(torch.empty(3, k, device=meta), qweight, scales, torch.empty_like(scales),
                                       torch.arange(k, device=meta), None, group_size, 4)
    assert y.shape == (3, n) and y.device == meta
