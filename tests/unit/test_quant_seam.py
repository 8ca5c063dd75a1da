"""The QuantMethod seam without a model: a method creates the layer's parameters, and the
layer's loaders shard them by the dims each parameter declares. A fake int4 method with
AWQ's layout (packed along the output) and GPTQ's (packed along the input, with g_idx) is
loaded into q/k/v, gate/up and row-parallel layers at TP=2: every rank's unpacked shard equals
the slice of the unpacked full tensor. Config resolution: skips, mismatches, unknown names."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from pagedlm.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedlm.layers.quantization import (
    QUANTIZATION_METHODS,
    QuantizationConfig,
    QuantizationError,
    QuantMethod,
    is_layer_skipped,
    new_param,
    register_quantization_config,
    resolve_quantization,
)
from pagedlm.layers.quantization.unquantized import UnquantizedLinearMethod
from pagedlm.worker.distributed import destroy_distributed_environment, set_parallel_state_for_tests

PACK = 8  # int4 values per int32
GROUP = 4


def pack(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Eight 4-bit values per int32 along ``dim``, lowest nibble first (a plain order: the
    seam only moves packed elements, it never looks inside them)."""
    v = values.movedim(dim, -1).to(torch.int64)
    v = v.reshape(*v.shape[:-1], -1, PACK)
    packed = sum(v[..., i] << (4 * i) for i in range(PACK))
    packed = torch.where(packed >= 1 << 31, packed - (1 << 32), packed)  # as int32 bits
    return packed.to(torch.int32).movedim(-1, dim)


def unpack(packed: torch.Tensor, dim: int) -> torch.Tensor:
    p = packed.movedim(dim, -1).to(torch.int64) & 0xFFFFFFFF
    v = torch.stack([(p >> (4 * i)) & 0xF for i in range(PACK)], dim=-1)
    return v.reshape(*p.shape[:-1], -1).movedim(-1, dim)


class FakeInt4Method(QuantMethod):
    """Parameters in AWQ's (``packed_output``) or GPTQ's layout; apply is not needed here."""

    def __init__(self, packed_output: bool) -> None:
        self.packed_output = packed_output

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype, weight_loader) -> None:
        n, k = sum(output_partition_sizes), input_size_per_partition
        loader = {"weight_loader": weight_loader}
        if self.packed_output:  # AWQ: qweight [in, out/8], qzeros [in/g, out/8]
            layer.register_parameter("qweight", new_param((k, n // PACK), torch.int32, input_dim=0, output_dim=1,
                                                          packed_dim=1, pack_factor=PACK, **loader))
        else:  # GPTQ: qweight [in/8, out], g_idx [in]
            layer.register_parameter("qweight", new_param((k // PACK, n), torch.int32, input_dim=0, output_dim=1,
                                                          packed_dim=0, pack_factor=PACK, **loader))
            layer.register_parameter("g_idx", new_param((k,), torch.int32, input_dim=0, **loader))
        layer.register_parameter("qzeros", new_param((k // GROUP, n // PACK), torch.int32, input_dim=0, output_dim=1,
                                                     packed_dim=1, pack_factor=PACK, **loader))
        layer.register_parameter("scales", new_param((k // GROUP, n), torch.float32, input_dim=0, output_dim=1,
                                                     **loader))
        # A per-tensor value per fused part, as fp8 checkpoints store weight_scale.
        layer.register_parameter("part_scale", new_param((len(output_partition_sizes),), torch.float32,
                                                         shard_indexed=True, **loader))

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class FakeConfig(QuantizationConfig):
    name = "fake_int4"

    def __init__(self, packed_output: bool = True, ignore: tuple[str, ...] = ()) -> None:
        self.packed_output, self.ignore = packed_output, ignore

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "FakeConfig":
        return cls(bool(hf_quant_cfg.get("packed_output", True)), tuple(hf_quant_cfg.get("ignore", ())))

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantMethod | None:
        return None if is_layer_skipped(prefix, self.ignore) else FakeInt4Method(self.packed_output)


@pytest.fixture(autouse=True)
def single_rank_after():
    yield
    destroy_distributed_environment()


def checkpoint_layer(out_features: int, in_features: int, packed_output: bool, seed: int) -> dict[str, torch.Tensor]:
    """One checkpoint layer: its 4-bit codes and zeros unpacked (for the oracle) and packed."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (in_features, out_features), generator=g)  # [in, out]
    zeros = torch.randint(0, 16, (in_features // GROUP, out_features), generator=g)
    return {
        "codes": codes, "zeros": zeros,
        "qweight": pack(codes, 1 if packed_output else 0), "qzeros": pack(zeros, 1),
        "scales": torch.rand(in_features // GROUP, out_features, generator=g),
        "g_idx": torch.arange(in_features, dtype=torch.int32) // GROUP,
        "part_scale": torch.rand((), generator=g),
    }


def load_layer(layer: nn.Module, parts: dict[Any, dict[str, torch.Tensor]]) -> None:
    params = dict(layer.named_parameters())
    for shard_id, tensors in parts.items():
        for name, param in params.items():
            param.weight_loader(param, tensors[name], shard_id)


def per_rank(tp: int, build, parts) -> list[nn.Module]:
    layers = []
    for rank in range(tp):
        set_parallel_state_for_tests(rank, tp, 1)
        layer = build()
        load_layer(layer, parts)
        layers.append(layer)
    return layers


def assert_fused_shards(layers, parts, local_widths: list[int], packed_output: bool) -> None:
    """Each rank's unpacked codes / zeros / scales = [part 0 slice | part 1 slice | ...]."""
    for rank, layer in enumerate(layers):
        codes = unpack(layer.qweight.data, 1 if packed_output else 0)
        zeros = unpack(layer.qzeros.data, 1)
        offset = 0
        for (shard_id, ckpt), width in zip(parts.items(), local_widths):
            rows = slice(rank * width, (rank + 1) * width) if ckpt["codes"].shape[1] > width else slice(0, width)
            assert torch.equal(codes[:, offset:offset + width], ckpt["codes"][:, rows]), shard_id
            assert torch.equal(zeros[:, offset:offset + width], ckpt["zeros"][:, rows]), shard_id
            assert torch.equal(layer.scales.data[:, offset:offset + width], ckpt["scales"][:, rows]), shard_id
            offset += width
        assert offset == codes.shape[1]
        assert torch.equal(layer.part_scale.data, torch.stack([p["part_scale"] for p in parts.values()]))


@pytest.mark.parametrize("packed_output", [True, False], ids=["awq_layout", "gptq_layout"])
def test_packed_qkv_and_gate_up_shard_at_tp2(packed_output: bool) -> None:
    hidden, head_dim = 32, 16
    cfg = FakeConfig(packed_output)
    qkv = {"q": checkpoint_layer(4 * head_dim, hidden, packed_output, 1),
           "k": checkpoint_layer(2 * head_dim, hidden, packed_output, 2),
           "v": checkpoint_layer(2 * head_dim, hidden, packed_output, 3)}
    layers = per_rank(2, lambda: QKVParallelLinear(hidden, head_dim, 4, 2, quant_config=cfg,
                                                   prefix="model.layers.0.self_attn.qkv_proj"), qkv)
    assert_fused_shards(layers, qkv, [2 * head_dim, head_dim, head_dim], packed_output)
    gate_up = {0: checkpoint_layer(64, hidden, packed_output, 4), 1: checkpoint_layer(64, hidden, packed_output, 5)}
    layers = per_rank(2, lambda: MergedColumnParallelLinear(hidden, [64, 64], quant_config=cfg,
                                                            prefix="model.layers.0.mlp.gate_up_proj"), gate_up)
    assert_fused_shards(layers, gate_up, [32, 32], packed_output)


def test_replicated_kv_head_is_whole_on_every_rank() -> None:
    hidden, head_dim = 32, 16
    qkv = {"q": checkpoint_layer(2 * head_dim, hidden, True, 1), "k": checkpoint_layer(head_dim, hidden, True, 2),
           "v": checkpoint_layer(head_dim, hidden, True, 3)}
    layers = per_rank(2, lambda: QKVParallelLinear(hidden, head_dim, 2, 1, quant_config=FakeConfig(),
                                                   prefix="x.qkv_proj"), qkv)
    assert_fused_shards(layers, qkv, [head_dim, head_dim, head_dim], True)


@pytest.mark.parametrize("packed_output", [True, False], ids=["awq_layout", "gptq_layout"])
def test_packed_row_parallel_splits_the_input(packed_output: bool) -> None:
    in_features, out_features = 64, 32
    ckpt = checkpoint_layer(out_features, in_features, packed_output, 7)
    layers = per_rank(2, lambda: RowParallelLinear(in_features, out_features, quant_config=FakeConfig(packed_output),
                                                   prefix="model.layers.0.mlp.down_proj"), {None: ckpt})
    half = in_features // 2
    for rank, layer in enumerate(layers):
        rows = slice(rank * half, (rank + 1) * half)
        codes = unpack(layer.qweight.data, 1 if packed_output else 0)
        assert torch.equal(codes, ckpt["codes"][rows])
        assert torch.equal(unpack(layer.qzeros.data, 1), ckpt["zeros"][rank * half // GROUP:(rank + 1) * half // GROUP])
        assert torch.equal(layer.scales.data, ckpt["scales"][rank * half // GROUP:(rank + 1) * half // GROUP])
        if not packed_output:
            assert torch.equal(layer.g_idx.data, ckpt["g_idx"][rows])
        assert layer.part_scale.item() == ckpt["part_scale"].item()


def test_excluded_layers_stay_unquantized() -> None:
    cfg = FakeConfig(ignore=("lm_head", "re:.*self_attn.o_proj", "model.layers.1.mlp.gate_proj",
                             "model.layers.1.mlp.up_proj"))
    assert isinstance(RowParallelLinear(32, 32, quant_config=cfg, prefix="model.layers.0.self_attn.o_proj")
                      .quant_method, UnquantizedLinearMethod)
    layer = MergedColumnParallelLinear(32, [32, 32], quant_config=cfg, prefix="model.layers.1.mlp.gate_up_proj")
    assert isinstance(layer.quant_method, UnquantizedLinearMethod) and layer.weight.shape == (64, 32)
    assert isinstance(MergedColumnParallelLinear(32, [32, 32], quant_config=cfg, prefix="model.layers.0.mlp.gate_up_proj")
                      .quant_method, FakeInt4Method)
    assert is_layer_skipped("lm_head", cfg.ignore) and not is_layer_skipped("model.layers.10.mlp.down_proj", cfg.ignore)
    with pytest.raises(QuantizationError, match="some of"):
        is_layer_skipped("model.layers.2.self_attn.qkv_proj", ["model.layers.2.self_attn.q_proj"])


class HFConfig:
    def __init__(self, quantization_config: dict | None) -> None:
        if quantization_config is not None:
            self.quantization_config = quantization_config


class OtherConfig(FakeConfig):
    name = "fake_other"


def test_resolution_from_checkpoint_and_flag() -> None:
    register_quantization_config(FakeConfig)
    register_quantization_config(OtherConfig)
    try:
        with pytest.raises(QuantizationError, match="does not match the checkpoint"):
            resolve_quantization(HFConfig({"quant_method": "fake_int4"}), "fake_other")
        assert resolve_quantization(HFConfig(None), None) is None
        resolved = resolve_quantization(HFConfig({"quant_method": "fake_int4", "packed_output": False}), None)
        assert isinstance(resolved, FakeConfig) and not resolved.packed_output
        assert isinstance(resolve_quantization(HFConfig({"quant_method": "fake_int4"}), "fake_int4"), FakeConfig)
        assert isinstance(resolve_quantization(HFConfig(None), "fake_int4"), FakeConfig)  # online
        with pytest.raises(QuantizationError, match="quant_method 'bitsandbytes_9bit'"):
            resolve_quantization(HFConfig({"quant_method": "bitsandbytes_9bit"}), None)
        with pytest.raises(QuantizationError, match="unknown quantization 'nope'"):
            resolve_quantization(HFConfig(None), "nope")
        with pytest.raises(QuantizationError, match="no quant_method"):
            resolve_quantization(HFConfig({"bits": 4}), None)
    finally:
        QUANTIZATION_METHODS.pop("fake_int4", None)
        QUANTIZATION_METHODS.pop("fake_other", None)
