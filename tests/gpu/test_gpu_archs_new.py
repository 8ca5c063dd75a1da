"""The architectures of tests/models/test_parity_archs_{more,other,round3,round4,moe_round2}.py and
test_parity_deepseek.py (decompressed MLA heads of 24 and 32, widths the kernels mask) on
a GPU (Triton attention and fused-MoE kernels, CUDA graphs; partial, GPT-J-style and no RoPE
before the cache write): greedy
outputs agree with the CPU engine on the same tiny float32 checkpoints (which those files hold
equal to transformers). Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from models.arch_parity_helpers import checkpoint_getter
from models.test_parity_archs_moe_round2 import CHECKPOINTS as MOE_ROUND2
from models.test_parity_archs_more import CHECKPOINTS as LLAMA_VARIANTS
from models.test_parity_archs_other import CHECKPOINTS as OTHER_DECODERS
from models.test_parity_archs_round3 import CHECKPOINTS as ROUND3
from models.test_parity_archs_round4 import CHECKPOINTS as ROUND4
from models.test_parity_deepseek import CHECKPOINTS as DEEPSEEK

from pagedlm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CHECKPOINTS = {**LLAMA_VARIANTS, **OTHER_DECODERS, **ROUND3, **ROUND4, **MOE_ROUND2, **DEEPSEEK}
assert len(CHECKPOINTS) == sum(map(len, (LLAMA_VARIANTS, OTHER_DECODERS, ROUND3, ROUND4, MOE_ROUND2, DEEPSEEK)))
PROMPTS = [[7], [11, 23, 5, 60, 2], list(range(30, 46)), [(i * 37) % 500 + 5 for i in range(41)],
           [(i * 13) % 490 + 7 for i in range(70)]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return checkpoint_getter(tmp_path_factory, CHECKPOINTS, 500)


def greedy_ids(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_gpu_greedy_matches_cpu(checkpoint, name):
    path = checkpoint(name)
    cpu = greedy_ids(LLM(path, device="cpu", max_model_len=128))
    gpu = greedy_ids(LLM(path, device="cuda", dtype="float32", max_model_len=128, max_num_seqs=8,
                         num_gpu_blocks_override=256))
    matches = sum(a == b for a, b in zip(cpu, gpu))
    # The kernels' float32 dots may run in tf32: equal bar a rare near-tie.
    assert matches >= len(PROMPTS) - 1, (cpu, gpu)
