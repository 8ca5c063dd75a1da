"""quantization_config variants real checkpoints carry, parsed without a model: which scheme
each layer gets, and what is refused (with a message) rather than silently ignored."""

from __future__ import annotations

import pytest

from pagedlm.kernels.quant_reference import FP8_DTYPE
from pagedlm.layers.quantization import QuantizationError, get_quantization_config

INT8_W8A8_GROUP = {"weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"},
                   "input_activations": {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": True,
                                         "strategy": "token"}}
FP8_W8A8_GROUP = {"weights": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel"},
                  "input_activations": {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": True,
                                        "strategy": "token"}}


def compressed_tensors(groups: dict, **extra) -> dict:
    return {"quant_method": "compressed-tensors", "format": "int-quantized", "ignore": ["lm_head"],
            "config_groups": groups, **extra}


def scheme_of(cfg, prefix: str):
    method = cfg.get_quant_method(None, prefix)
    return None if method is None else method.scheme


@pytest.mark.parametrize("order", ["linear_first", "name_first"])
def test_named_target_wins_over_linear_class(order: str) -> None:
    """compressed-tensors (and vLLM) match layer names and re: regexes of every group before
    module classes: a mixed checkpoint whose first group targets "Linear" still runs its
    down_proj with the group that names it."""
    linear = {**INT8_W8A8_GROUP, "targets": ["Linear"]}
    named = {**FP8_W8A8_GROUP, "targets": ["re:.*down_proj$"]}
    groups = {"group_0": linear, "group_1": named} if order == "linear_first" else \
        {"group_0": named, "group_1": linear}
    cfg = get_quantization_config("compressed-tensors").from_config(compressed_tensors(groups))
    assert scheme_of(cfg, "model.layers.0.mlp.down_proj").weight_dtype == FP8_DTYPE
    assert scheme_of(cfg, "model.layers.0.self_attn.o_proj").weight_dtype != FP8_DTYPE
    assert scheme_of(cfg, "model.layers.0.self_attn.qkv_proj").weight_dtype != FP8_DTYPE


def test_compressed_sparsity_is_refused_dense_runs() -> None:
    """A 2:4 checkpoint stored compressed (sparse-24-bitmask: compressed / bitmask / shape
    tensors instead of weight) is refused by its config, not by an unknown tensor mid-load."""
    group = {"group_0": {**FP8_W8A8_GROUP, "targets": ["Linear"]}}
    sparse = {"format": "sparse-24-bitmask", "sparsity_structure": "2:4", "targets": ["Linear"], "ignore": ["lm_head"]}
    ct = get_quantization_config("compressed-tensors")
    with pytest.raises(QuantizationError, match="sparsity_config format 'sparse-24-bitmask'"):
        ct.from_config(compressed_tensors(group, format="float-quantized", sparsity_config=sparse))
    cfg = ct.from_config(compressed_tensors(group, format="float-quantized",
                                            sparsity_config={**sparse, "format": "dense"}))
    assert scheme_of(cfg, "model.layers.0.mlp.down_proj").weight_dtype == FP8_DTYPE


def test_online_transforms_are_refused() -> None:
    """transform_config (QuIP / SpinQuant Hadamards applied at run time) changes what every
    targeted layer computes: running without it would be silently wrong."""
    group = {"group_0": {**FP8_W8A8_GROUP, "targets": ["Linear"]}}
    transforms = {"config_groups": {"u": {"type": "hadamard", "apply": [
        {"targets": ["re:.*down_proj$"], "location": "input", "inverse": False}]}}}
    ct = get_quantization_config("compressed-tensors")
    with pytest.raises(QuantizationError, match="transform_config"):
        ct.from_config(compressed_tensors(group, format="float-quantized", transform_config=transforms))
    assert ct.from_config(compressed_tensors(group, format="float-quantized", transform_config=None)).groups


@pytest.mark.parametrize("kind", ["int", "float"])
def test_asymmetric_weights_are_refused(kind: str) -> None:
    """Zero points are dropped at load (symmetric checkpoints store zeros): an asymmetric
    scheme of either type is refused, not run without its zero points."""
    base = INT8_W8A8_GROUP if kind == "int" else FP8_W8A8_GROUP
    group = {"group_0": {**base, "targets": ["Linear"], "weights": {**base["weights"], "symmetric": False}}}
    with pytest.raises(QuantizationError, match=f"asymmetric {kind}8 weights"):
        get_quantization_config("compressed-tensors").from_config(compressed_tensors(group))


@pytest.mark.parametrize("fmt", ["dense", "float-quantized"])
def test_kv_cache_scheme_only_checkpoint_runs_unquantized_linears(fmt: str) -> None:
    """llm-compressor's fp8-KV-cache-only checkpoints carry kv_cache_scheme and no config
    groups: vLLM serves them (linear layers unquantized, k/v scales for --kv-cache-dtype fp8)."""
    kv_only = {"quant_method": "compressed-tensors", "format": fmt, "config_groups": {}, "ignore": [],
               "kv_cache_scheme": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor",
                                   "dynamic": False}, "quantization_status": "compressed"}
    cfg = get_quantization_config("compressed-tensors").from_config(kv_only)
    assert scheme_of(cfg, "model.layers.0.self_attn.qkv_proj") is None
    assert scheme_of(cfg, "model.layers.0.mlp.down_proj") is None


def test_vllm_marlin_names_run_the_checkpoints_format() -> None:
    """--quantization awq_marlin / gptq_marlin (vLLM's Marlin kernels for the same formats) run
    the checkpoint's AWQ / GPTQ with pagedlm's kernels; they were "unknown quantization"."""
    from types import SimpleNamespace

    from pagedlm.layers.quantization import resolve_quantization

    awq = SimpleNamespace(quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128,
                                               "zero_point": True, "version": "gemm"})
    gptq = SimpleNamespace(quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128,
                                                "desc_act": False, "sym": True})
    assert resolve_quantization(awq, "awq_marlin").name == "awq"
    assert resolve_quantization(gptq, "gptq_marlin").name == "gptq"
    with pytest.raises(QuantizationError, match="does not match the checkpoint"):
        resolve_quantization(gptq, "awq_marlin")
