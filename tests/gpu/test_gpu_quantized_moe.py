"""Quantized MoE checkpoints (routed experts dequantized while loading) and block-wise fp8
checkpoints (W8A16, the weight dequantized per call) on a GPU: the engine, CUDA graphs on and
off, agrees with the CPU engine on the same checkpoint (test_gpu_wna16's rule: equal tokens
until a divergence where each side's token is in the other's top-k, logprobs close before).
Skipped without CUDA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pagedlm import LLM

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from quant_helpers import write_block_fp8  # noqa: E402
from test_gpu_wna16 import assert_agree, run  # noqa: E402
from wna16_helpers import quantize_checkpoint  # noqa: E402

QWEN3_MOE = dict(head_dim=16, num_experts=8, num_experts_per_tok=3, moe_intermediate_size=32, norm_topk_prob=True)


@pytest.fixture(scope="module")
def moe_checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("qmoe_gpu"), "Qwen3MoeForCausalLM", seed=13, **QWEN3_MOE))


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("block_fp8_gpu"), seed=14))


def quantized(fmt: str, src: str, tmp_path: Path) -> Path:
    if fmt == "block_fp8":
        write_block_fp8(src, tmp_path / "q", tmp_path / "ref", (16, 16))
        return tmp_path / "q"
    qdir, _ = quantize_checkpoint(src, tmp_path / "q", tmp_path / "ref", fmt, group_size=16)
    return qdir


@pytest.mark.parametrize("case", [("moe", "awq"), ("moe", "gptq"), ("moe", "block_fp8"), ("llama", "block_fp8")])
def test_gpu_matches_cpu(moe_checkpoint, llama_checkpoint, tmp_path, case):
    model, fmt = case
    qdir = quantized(fmt, moe_checkpoint if model == "moe" else llama_checkpoint, tmp_path)
    cpu = run(LLM(str(qdir), device="cpu", max_model_len=128))
    for enforce_eager in (True, False):
        gpu = run(LLM(str(qdir), device="cuda", dtype="float32", max_model_len=128, max_num_seqs=8,
                      enforce_eager=enforce_eager, num_gpu_blocks_override=256))
        assert_agree(cpu, gpu)
