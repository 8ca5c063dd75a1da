"""GPTQ under tensor parallelism (gloo, worker processes): TP=2 equals TP=1 on the shared
workload (chunked prefill, prefix hits, preemption). The act-order checkpoint covers the hard
cases at once: qweight narrowed along its packed input dim (row-parallel), qzeros along its
packed output dim (column-parallel, fused q/k/v and gate/up parts at packed offsets), and
row-parallel ranks that keep every group because their rows index any group. AWQ's packed
tensors go through the same narrowing (packed output dim); compressed-tensors' pack-quantized
tensors are the transposed orientation (weight_packed [N, K / pack], zero points packed along N).
A quantized MoE checkpoint (AWQ Qwen3-MoE) adds its experts, dequantized whole while loading
and then split by the fused-MoE loader like a float checkpoint's; a Phi-3 checkpoint its fused
qkv_proj / gate_up_proj tensors, split per part before the ranks narrow them."""

from __future__ import annotations

import pytest

from tests.models.wna16_helpers import quantize_checkpoint

from .parallel_helpers import assert_tp2_equals_tp1

VARIANTS = {
    "gptq_act_order": ("gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
    # compressed-tensors' [N, K] orientation: weight_packed narrowed along its packed input dim
    # (row-parallel) and its rows (column-parallel), weight_zero_point along its packed rows
    "compressed_tensors_act_order": ("compressed-tensors", dict(bits=4, group_size=16, sym=False, desc_act=True)),
}


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("wna16_tp_float"), seed=21))


@pytest.fixture(scope="module")
def moe_checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("wna16_tp_moe"), "Qwen3MoeForCausalLM", seed=22,
                                     head_dim=16, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
                                     norm_topk_prob=True))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tp2_equals_tp1(float_checkpoint, tmp_path, variant: str) -> None:
    fmt, options = VARIANTS[variant]
    compare_tp(float_checkpoint, tmp_path, fmt, options)


def test_quantized_moe_tp2_equals_tp1(moe_checkpoint, tmp_path) -> None:
    compare_tp(moe_checkpoint, tmp_path, "awq", dict(group_size=16))


def test_fused_checkpoint_tp2_equals_tp1(tmp_path_factory, tmp_path) -> None:
    """Phi-3's fused qkv_proj / gate_up_proj in GPTQ with act order: each fused tensor split per
    part (qzeros in packed units, g_idx whole) and then narrowed per rank."""
    from pagedlm.demo import build_tiny_checkpoint

    src = build_tiny_checkpoint(tmp_path_factory.mktemp("wna16_tp_phi3"), "Phi3ForCausalLM", seed=23, pad_token_id=0)
    compare_tp(str(src), tmp_path, "gptq", dict(bits=4, group_size=16, sym=False, desc_act=True))


def compare_tp(float_checkpoint: str, tmp_path, fmt: str, options: dict) -> None:
    qdir, _ = quantize_checkpoint(float_checkpoint, tmp_path / "q", tmp_path / "ref", fmt, **options)
    assert_tp2_equals_tp1(str(qdir))
