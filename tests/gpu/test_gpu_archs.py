"""The added architectures on a GPU (Triton attention with soft-capping and sliding windows,
the Triton fused MoE kernel, CUDA graphs): greedy outputs agree with the CPU reference on
tiny float32 checkpoints, and a bf16 run completes. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PROMPTS = [[7], [11, 23, 5, 60, 2], list(range(30, 46)), [(i * 37) % 500 + 5 for i in range(41)],
           [(i * 13) % 490 + 7 for i in range(70)]]
ARCHS = ["gemma2", "gemma3", "phi3", "mixtral", "qwen2_moe", "qwen3_moe", "gpt2", "qwen2_yarn"]


def greedy_ids(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("name", ARCHS)
def test_gpu_greedy_matches_cpu(checkpoint_factory, name):
    path = checkpoint_factory(name)
    cpu = greedy_ids(LLM(path, device="cpu", max_model_len=128))
    gpu_llm = LLM(path, device="cuda", dtype="float32", max_model_len=128, max_num_seqs=8,
                  num_gpu_blocks_override=256)
    gpu = greedy_ids(gpu_llm)
    matches = sum(a == b for a, b in zip(cpu, gpu))
    # The attention kernel's float32 dots may run in tf32: equal bar a rare near-tie.
    assert matches >= len(PROMPTS) - 1, (cpu, gpu)


@pytest.mark.parametrize("name", ["gemma2", "qwen3_moe"])
def test_gpu_bf16_runs(checkpoint_factory, name):
    llm = LLM(checkpoint_factory(name), device="cuda", dtype="bfloat16", max_model_len=128, max_num_seqs=4,
              num_gpu_blocks_override=256)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True),
                        use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 6 for o in outs)
