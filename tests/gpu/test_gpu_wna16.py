"""AWQ and GPTQ on a GPU: the engine (Triton W4A16 kernels, CUDA graphs on and off) agrees with
the CPU reference path on tiny quantized checkpoints, and the 8B shape loads with dummy
weights in both formats. Skipped without CUDA."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from pagedlm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from wna16_helpers import quantize_checkpoint  # noqa: E402

PROMPTS = [[7], [11, 23, 5, 60, 2], list(range(30, 46)), [(i * 37) % 500 + 5 for i in range(41)]]
NUM_LOGPROBS = 5


def run(llm: LLM) -> list:
    params = SamplingParams(temperature=0, max_tokens=12, logprobs=NUM_LOGPROBS, ignore_eos=True)
    return llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)


def assert_agree(cpu: list, gpu: list) -> None:
    """vLLM's rule for a half-precision run against float32: equal tokens until a divergence
    where each side's token is in the other's top-k, logprobs close before it."""
    for c, g in zip(cpu, gpu, strict=True):
        cc, gc = c.outputs[0], g.outputs[0]
        for pos, (a, b) in enumerate(zip(cc.token_ids, gc.token_ids)):
            if a != b:
                assert b in cc.logprobs[pos] and a in gc.logprobs[pos], (pos, cc.token_ids, gc.token_ids)
                break
            assert abs(cc.logprobs[pos][a].logprob - gc.logprobs[pos][b].logprob) < 0.1


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("wna16_gpu_float"), seed=11))


@pytest.mark.parametrize("fmt,options", [
    ("awq", dict(group_size=32)),
    ("gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
    ("gptq", dict(bits=8, group_size=32, sym=True)),
])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_gpu_matches_cpu_reference(float_checkpoint, tmp_path, fmt, options, dtype):
    qdir, _ = quantize_checkpoint(float_checkpoint, tmp_path / "q", tmp_path / "ref", fmt, **options)
    cpu = run(LLM(str(qdir), device="cpu", max_model_len=128))
    for enforce_eager in (True, False):
        gpu = run(LLM(str(qdir), device="cuda", dtype=dtype, max_model_len=128, max_num_seqs=8,
                      enforce_eager=enforce_eager, num_gpu_blocks_override=256))
        assert_agree(cpu, gpu)


@pytest.mark.parametrize("quant_config", [
    {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True},
])
def test_dummy_8b_shape_runs(tmp_path, quant_config):
    from pagedlm.benchmarks.shapes import make_shape_dir

    path = make_shape_dir("llama-3.1-8b", tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = quant_config
    (path / "config.json").write_text(json.dumps(config))
    llm = LLM(str(path), load_format="dummy", max_model_len=256, max_num_seqs=4, num_gpu_blocks_override=64)
    layer = llm.llm_engine.engine_core.runner.model.model.layers[0].mlp.down_proj
    assert layer.qweight.dtype == torch.int32 and layer.qweight.shape == (14336 // 8, 4096)
    out = llm.generate([{"prompt_token_ids": [1, 2, 3]}], SamplingParams(max_tokens=4, temperature=0,
                                                                         ignore_eos=True), use_tqdm=False)
    assert len(out[0].outputs[0].token_ids) == 4
