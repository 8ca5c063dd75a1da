"""Session 27's quantized paths on a GPU: architectures and formats whose quantized checkpoints
were first tested on the CPU (against transformers), here the GPU engine (its kernels, CUDA
graphs on) against the CPU engine on the same checkpoint with test_gpu_wna16's rule: dense
models in fp16 (the int4 / 8-bit kernels run on 16-bit activations; bf16's rounding alone moved
a logprob of these tiny random models by 0.11-0.12 against the rule's 0.1 on the H200, fp16
has three more mantissa bits), the MoE model in float32 (a tiny random model's routing makes
16-bit no oracle at that rule). With activations quantized per token (fbgemm_fp8, online int8)
a 16-bit input moves codes across their rounding boundaries (one fp8 step is 6-12%): there
test_gpu_quant's rule (tokens only, logprobs not compared; fp16 moved one by 0.15 on the H200,
the same model unquantized by 0.007). Skipped without CUDA."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from pagedlm import LLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from quant_helpers import FP8, Scheme, write_block_fp8, write_quantized  # noqa: E402
from test_gpu_quant import assert_agree as assert_tokens_agree  # noqa: E402
from test_gpu_wna16 import PROMPTS, assert_agree, run  # noqa: E402
from wna16_helpers import quantize_checkpoint  # noqa: E402

MLA = dict(kv_lora_rank=20, qk_nope_head_dim=16, qk_rope_head_dim=8, num_hidden_layers=2, n_routed_experts=8,
           num_experts_per_tok=3, moe_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1, n_group=4,
           topk_group=2, q_lora_rank=32, v_head_dim=12, num_key_value_heads=4, pad_token_id=0)
# name -> (architecture, config overrides, format, format options, the GPU engine's dtype)
CASES = {
    "phi3_awq": ("Phi3ForCausalLM", dict(pad_token_id=0), "awq", dict(group_size=16), "float16"),
    "gemma2_gptq": ("Gemma2ForCausalLM", dict(head_dim=16, query_pre_attn_scalar=16, attn_implementation="eager"),
                    "gptq", dict(bits=4, group_size=16, sym=False, desc_act=True), "float16"),
    "falcon_awq": ("FalconForCausalLM", dict(new_decoder_architecture=True, num_kv_heads=2, bias=True,
                                             parallel_attn=True), "awq", dict(group_size=16), "float16"),
    "llama_ct_w4a16": ("LlamaForCausalLM", {}, "compressed-tensors", dict(bits=4, group_size=16, sym=False,
                                                                          desc_act=True), "float16"),
    "deepseek_v3_block_fp8": ("DeepseekV3ForCausalLM", MLA, "block_fp8", {}, "float32"),
    "llama_fbgemm_fp8": ("LlamaForCausalLM", {}, "fbgemm_fp8", {}, "float16"),
    # wide enough (K 512-1,024) for the block-scaled decode GEMV's tiles
    "llama_block_fp8": ("LlamaForCausalLM", dict(hidden_size=512, intermediate_size=1024, num_attention_heads=8,
                                                 num_key_value_heads=4, head_dim=64), "block_fp8",
                        dict(block=(128, 128)), "float16"),
}


def _write(src: str, tmp_path: Path, fmt: str, options: dict) -> Path:
    qdir = tmp_path / "q"
    if fmt == "block_fp8":
        write_block_fp8(src, qdir, tmp_path / "ref", options.get("block", (16, 16)))
    elif fmt == "fbgemm_fp8":
        write_quantized(src, qdir, tmp_path / "ref", Scheme("compressed-tensors", FP8, per_channel=True,
                                                            activations="token"), PROMPTS)
        config = json.loads((qdir / "config.json").read_text())
        config["quantization_config"] = {"quant_method": "fbgemm_fp8", "activation_scale_ub": 0.5,
                                         "modules_to_not_convert": ["lm_head"]}
        (qdir / "config.json").write_text(json.dumps(config))
        from safetensors.torch import load_file, save_file

        tensors = load_file(str(qdir / "model.safetensors"))
        tensors.update({k.replace(".weight_scale", ".input_scale_ub"): torch.tensor([0.5]) for k in list(tensors)
                        if k.endswith(".weight_scale")})
        save_file(tensors, str(qdir / "model.safetensors"))
    else:
        quantize_checkpoint(src, qdir, tmp_path / "ref", fmt, **options)
    return qdir


@pytest.mark.parametrize("case", list(CASES))
def test_gpu_matches_cpu(tmp_path, case):
    from pagedlm.demo import build_tiny_checkpoint

    arch, overrides, fmt, options, dtype = CASES[case]
    src = str(build_tiny_checkpoint(tmp_path / "float", arch, seed=31, **overrides))
    qdir = _write(src, tmp_path, fmt, options)
    cpu = run(LLM(str(qdir), device="cpu", max_model_len=128))
    gpu = run(LLM(str(qdir), device="cuda", dtype=dtype, max_model_len=128, max_num_seqs=8,
                  num_gpu_blocks_override=256))
    agree(cpu, gpu, dynamic_activations=fmt == "fbgemm_fp8")


def agree(cpu: list, gpu: list, dynamic_activations: bool) -> None:
    if dynamic_activations:
        assert_tokens_agree([o.outputs[0] for o in cpu], [o.outputs[0] for o in gpu])
    else:
        assert_agree(cpu, gpu)


def test_gpu_in_flight_bitsandbytes_and_online_int8(tmp_path):
    """``--quantization bitsandbytes`` and ``int8`` on a float checkpoint, on the GPU. The
    checkpoint's weights are rounded to fp16 first: each engine quantizes the weights it loaded
    (float32 on the CPU, fp16 here), and one NF4 code flipped by that rounding is an eighth of
    its block's absmax (it moved a logprob by 0.12 on the H200)."""
    from safetensors.torch import load_file, save_file

    from pagedlm.demo import build_tiny_checkpoint

    src = str(build_tiny_checkpoint(tmp_path / "float", "LlamaForCausalLM", seed=32))
    weights = Path(src) / "model.safetensors"
    save_file({k: v.half().to(v.dtype) for k, v in load_file(str(weights)).items()}, str(weights))
    for quantization in ("bitsandbytes", "int8"):
        cpu = run(LLM(src, device="cpu", max_model_len=128, quantization=quantization))
        gpu = run(LLM(src, device="cuda", dtype="float16", max_model_len=128, max_num_seqs=8,
                      num_gpu_blocks_override=256, quantization=quantization))
        agree(cpu, gpu, dynamic_activations=quantization == "int8")
