"""Block-wise fp8 checkpoints (``weight_block_size``, ``weight_scale_inv`` per block), written by
the test (quant_helpers.write_block_fp8): the layers keep fp8 codes and run W8A16, so greedy ids
and top-k logprobs equal transformers on the dequantized weights at the parity tolerance, for a
Llama model (fused q/k/v and gate/up parts at block offsets), a non-square block, and a
Qwen3-MoE model (its experts dequantized while loading); two tensor-parallel ranks equal one."""

from __future__ import annotations

import pytest
import torch

from pagedlm.layers.quantization.block_fp8 import BlockFp8LinearMethod

from quant_helpers import FP8, write_block_fp8
from test_parity import PROMPTS, check_close, hf_reference, run

CASES = {"llama_16x16": ("llama", (16, 16)), "llama_16x32": ("llama", (16, 32)),
         "qwen3_moe_16x16": ("qwen3_moe", (16, 16))}


@pytest.mark.parametrize("case", list(CASES))
def test_block_fp8_matches_transformers_on_dequantized_weights(checkpoint_factory, tmp_path, case):
    arch, block = CASES[case]
    qdir, oracle = tmp_path / "q", tmp_path / "oracle"
    write_block_fp8(checkpoint_factory(arch), qdir, oracle, block)
    prompts = PROMPTS[:4]
    ref = hf_reference(str(oracle), prompts, 10)
    llm, outputs = run(str(qdir), prompts, max_model_len=128, enable_prefix_caching=True, max_num_batched_tokens=32)
    check_close(ref, outputs, prompts)
    qkv = llm.llm_engine.engine_core.runner.model.model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv.quant_method, BlockFp8LinearMethod) and qkv.weight.dtype == FP8
    assert qkv.weight_scale_inv.shape == (qkv.weight.shape[0] // block[0], qkv.weight.shape[1] // block[1])


def test_tensor_parallel_equals_single_rank(checkpoint_factory, tmp_path):
    """q/k/v and gate/up scales placed per part in whole blocks, row-parallel inputs split by
    blocks, on two gloo ranks: TP=2 gives TP=1's ids and logprobs on the shared workload."""
    from distributed.parallel_helpers import assert_tp2_equals_tp1

    qdir = tmp_path / "q"
    write_block_fp8(checkpoint_factory("llama"), qdir, tmp_path / "oracle", (16, 16))
    assert_tp2_equals_tp1(str(qdir))


def test_dummy_weights_run(checkpoint_factory, tmp_path):
    from pagedlm import LLM, SamplingParams

    qdir = tmp_path / "q"
    write_block_fp8(checkpoint_factory("llama"), qdir, tmp_path / "oracle", (16, 16))
    llm = LLM(str(qdir), device="cpu", max_model_len=64, load_format="dummy")
    out = llm.generate([{"prompt_token_ids": [5, 6, 7]}], SamplingParams(temperature=0.0, max_tokens=3, logprobs=2,
                                                                         ignore_eos=True), use_tqdm=False)
    lps = [lp.logprob for step in out[0].outputs[0].logprobs for lp in step.values()]
    assert len(out[0].outputs[0].token_ids) == 3 and all(torch.isfinite(torch.tensor(lps)))
