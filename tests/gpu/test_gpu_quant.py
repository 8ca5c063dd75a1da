"""Quantized checkpoints on the GPU: greedy output (bf16 activations, the fp8 / int8 kernels,
CUDA graphs on) agrees with the CPU reference path on the same checkpoint, by vLLM's rule
(each side's token in the other's top-k, compared up to the first divergence), with at most
one prompt diverging at its first token. Skipped without CUDA."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pagedlm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from quant_helpers import FP8, Scheme, write_quantized  # noqa: E402

PROMPTS = [[7], [11, 23, 5, 60, 2], list(range(30, 46)), [(i * 37) % 500 + 5 for i in range(41)],
           [(i * 13) % 490 + 7 for i in range(70)]]
SCHEMES = {
    "fp8_static": Scheme("fp8", FP8, per_channel=False, activations="static"),
    "fp8_token": Scheme("compressed-tensors", FP8, per_channel=True, activations="token"),
    "int8_w8a8": Scheme("compressed-tensors", torch.int8, per_channel=True, activations="token"),
    "int8_w8a16": Scheme("compressed-tensors", torch.int8, per_channel=True, activations=None),
}
PARAMS = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, logprobs=5)


def run(llm: LLM) -> list:
    return [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], PARAMS, use_tqdm=False)]


def assert_agree(cpu: list, gpu: list) -> None:
    first_token_divergences = 0
    for a, b in zip(cpu, gpu, strict=True):
        for pos, (ta, tb) in enumerate(zip(a.token_ids, b.token_ids)):
            if ta != tb:
                assert ta in b.logprobs[pos] and tb in a.logprobs[pos], (pos, a.token_ids, b.token_ids)
                first_token_divergences += pos == 0
                break
    assert first_token_divergences <= 1, ([a.token_ids for a in cpu], [b.token_ids for b in gpu])


@pytest.mark.parametrize("name", list(SCHEMES))
def test_gpu_quantized_matches_cpu_reference(llama_checkpoint, tmp_path, name: str) -> None:
    write_quantized(llama_checkpoint, tmp_path / "q", tmp_path / "o", SCHEMES[name], PROMPTS)
    cpu = run(LLM(str(tmp_path / "q"), device="cpu", max_model_len=128))
    gpu_llm = LLM(str(tmp_path / "q"), device="cuda", dtype="bfloat16", max_model_len=128, max_num_seqs=8,
                  num_gpu_blocks_override=512)
    assert gpu_llm.llm_engine.engine_core.runner.graph_runner is not None  # CUDA graphs captured
    assert_agree(cpu, run(gpu_llm))


def test_gpu_online_fp8_runs_with_graphs(llama_checkpoint) -> None:
    cpu = run(LLM(llama_checkpoint, device="cpu", max_model_len=128, quantization="fp8"))
    gpu = run(LLM(llama_checkpoint, device="cuda", dtype="bfloat16", max_model_len=128, max_num_seqs=8,
                  num_gpu_blocks_override=512, quantization="fp8"))
    assert_agree(cpu, gpu)
