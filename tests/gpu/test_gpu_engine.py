"""The engine on a GPU: greedy outputs agree with the CPU reference on a tiny float32
checkpoint, with CUDA graphs on and off. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PROMPTS = [[7], [11, 23, 5, 60, 2], list(range(30, 46)), [(i * 37) % 500 + 5 for i in range(41)],
           [(i * 13) % 490 + 7 for i in range(70)]]


def greedy_ids(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("enforce_eager", [True, False])
def test_gpu_greedy_matches_cpu(llama_checkpoint, enforce_eager):
    cpu = greedy_ids(LLM(llama_checkpoint, device="cpu", max_model_len=128))
    gpu_llm = LLM(llama_checkpoint, device="cuda", dtype="float32", max_model_len=128, max_num_seqs=8,
                  enforce_eager=enforce_eager, num_gpu_blocks_override=512)
    assert (gpu_llm.llm_engine.engine_core.runner.graph_runner is None) == enforce_eager
    gpu = greedy_ids(gpu_llm)
    if not enforce_eager:  # decode steps sampled by the LM-head + sampling graphs
        assert gpu_llm.llm_engine.engine_core.runner.graph_sampler.num_replays > 0
    matches = sum(a == b for a, b in zip(cpu, gpu))
    # tf32-free float32 on both sides: token-for-token equal, bar a rare near-tie.
    assert matches >= len(PROMPTS) - 1, (cpu, gpu)


def test_gpu_bf16_default_dtype(llama_checkpoint):
    llm = LLM(llama_checkpoint, device="cuda", max_model_len=128, max_num_seqs=4, num_gpu_blocks_override=512)
    assert llm.llm_engine.model_config.dtype == "bfloat16"
    out = llm.generate("hello", SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4
