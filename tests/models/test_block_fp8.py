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


def test_compressed_tensors_fp8_block(checkpoint_factory, tmp_path):
    """llm-compressor's FP8_BLOCK (compressed-tensors float-quantized, ``strategy: block``): the
    same tensors with the scales named ``weight_scale``, activations dynamic per group in the
    config (run W8A16 here): equal to transformers on the dequantized weights."""
    import json

    from safetensors.torch import load_file, save_file

    from pagedlm.layers.quantization import QuantizationError

    from quant_parity_helpers import PARITY_PROMPTS, PARITY_TOKENS

    qdir, oracle = tmp_path / "q", tmp_path / "oracle"
    write_block_fp8(checkpoint_factory("llama"), qdir, oracle, (16, 16))
    tensors = load_file(str(qdir / "model.safetensors"))
    save_file({k.replace(".weight_scale_inv", ".weight_scale"): v for k, v in tensors.items()},
              str(qdir / "model.safetensors"))
    config = json.loads((qdir / "config.json").read_text())
    group = {"targets": ["Linear"], "output_activations": None,
             "weights": {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False, "strategy": "block",
                         "block_structure": [16, 16]},
             "input_activations": {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": True,
                                   "strategy": "group", "group_size": 16}}
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "float-quantized",
                                     "ignore": ["lm_head"], "config_groups": {"group_0": group}}
    (qdir / "config.json").write_text(json.dumps(config))
    ref = hf_reference(str(oracle), PARITY_PROMPTS, PARITY_TOKENS)
    llm, outputs = run(str(qdir), PARITY_PROMPTS, max_model_len=128)
    check_close(ref, outputs, PARITY_PROMPTS)
    qkv = llm.llm_engine.engine_core.runner.model.model.layers[0].self_attn.qkv_proj
    assert isinstance(qkv.quant_method, BlockFp8LinearMethod) and qkv.weight_scale.dtype == torch.float32
    group["weights"]["block_structure"] = [16]
    (qdir / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizationError, match="block_structure"):
        run(str(qdir), PARITY_PROMPTS, max_model_len=128)
