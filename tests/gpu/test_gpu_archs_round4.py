"""The architectures of tests/models/test_parity_archs_round4.py (dense) and
test_parity_archs_moe_round2.py (MoE) on a GPU (Triton attention and fused-MoE kernels, CUDA
graphs): greedy outputs agree with the CPU engine on the same tiny float32 checkpoints (which
those files hold equal to transformers). Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from models.arch_parity_helpers import checkpoint_getter
from models.test_parity_archs_moe_round2 import CHECKPOINTS as MOE
from models.test_parity_archs_round4 import CHECKPOINTS as DENSE

from pagedlm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PROMPTS = [[7], [11, 23, 5, 60, 2], list(range(30, 46)), [(i * 37) % 390 + 5 for i in range(41)],
           [(i * 13) % 380 + 7 for i in range(70)]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    dense = checkpoint_getter(tmp_path_factory, DENSE, 400)
    moe = checkpoint_getter(tmp_path_factory, MOE, 500)
    return lambda name: dense(name) if name in DENSE else moe(name)


def greedy_ids(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("name", [*DENSE, *MOE])
def test_gpu_round4_greedy_matches_cpu(checkpoint, name):
    path = checkpoint(name)
    cpu = greedy_ids(LLM(path, device="cpu", max_model_len=128))
    gpu = greedy_ids(LLM(path, device="cuda", dtype="float32", max_model_len=128, max_num_seqs=8,
                         num_gpu_blocks_override=256))
    matches = sum(a == b for a, b in zip(cpu, gpu))
    # The kernels' float32 dots may run in tf32: equal bar a rare near-tie.
    assert matches >= len(PROMPTS) - 1, (cpu, gpu)
