"""Quantized DeepSeek-V2 / V3 checkpoints: the multi-head latent attention's projections
(q_a / q_b or q, kv_a_proj_with_mqa, kv_b, o), the dense layer and the shared experts run their
linear methods, the routed experts are dequantized while loading. Against transformers running
the dequantized weights (float32, CPU): greedy ids and top-k logprobs at the parity tolerance,
for DeepSeek-V3's own block-wise fp8 (with kv_lora_rank 20, so kv_a_proj_with_mqa's 28 rows and
kv_b_proj's 20 inputs end in partial 16-wide blocks, as V3's 576-row kv_a_proj_with_mqa does in
128-row blocks) and for AWQ / GPTQ on V2-Lite's plain q_proj."""

from __future__ import annotations

import pytest
import torch

from models.test_parity_deepseek import CHECKPOINTS as DEEPSEEK
from quant_helpers import FP8
from quant_parity_helpers import assert_block_fp8_parity, assert_wna16_parity

CHECKPOINTS = {
    "deepseek_v3_ragged": (DEEPSEEK["deepseek_v3"][0], {**DEEPSEEK["deepseek_v3"][1], "kv_lora_rank": 20}),
    # widths in whole 32-wide words for the quantizers' packers (AutoAWQ's along the output,
    # AutoGPTQ's along the input): kv_a_proj_with_mqa 32 + 32 rows, kv_b_proj 32 inputs
    "deepseek_v2_lite_q": (DEEPSEEK["deepseek_v2_lite"][0],
                           {**DEEPSEEK["deepseek_v2_lite"][1], "kv_lora_rank": 32, "qk_rope_head_dim": 32}),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from models.arch_parity_helpers import checkpoint_getter

    return checkpoint_getter(tmp_path_factory, CHECKPOINTS, 950)


def attention_and_experts(llm):
    layers = llm.llm_engine.engine_core.runner.model.model.layers
    moe = next(layer.mlp for layer in layers if hasattr(layer.mlp, "experts"))
    return layers[0].self_attn, moe.experts


def test_deepseek_v3_block_fp8(checkpoint, tmp_path):
    attn, experts = attention_and_experts(assert_block_fp8_parity(checkpoint("deepseek_v3_ragged"), tmp_path))
    assert attn.kv_a_proj_with_mqa.weight.dtype == FP8 and attn.kv_a_proj_with_mqa.weight_scale_inv.shape == (2, 4)
    assert attn.kv_b_proj.weight_scale_inv.shape[1] == 2  # 20 inputs: one whole block and a partial one
    assert experts.w13_weight.dtype == torch.float32


@pytest.mark.parametrize("fmt,options", [("awq", dict(group_size=16)),
                                         ("gptq", dict(bits=4, group_size=16, sym=False, desc_act=True))])
def test_deepseek_v2_lite_wna16(checkpoint, tmp_path, fmt, options):
    attn, experts = attention_and_experts(assert_wna16_parity(checkpoint("deepseek_v2_lite_q"), tmp_path, fmt,
                                                              **options))
    assert attn.q_proj.qweight.dtype == torch.int32 and attn.kv_b_proj.qweight.dtype == torch.int32
    assert experts.w13_weight.dtype == torch.float32
