"""On a GPU, against the CPU engine on the same tiny float32 checkpoints (which
tests/models/test_transformers_backend.py and tests/unit/test_logprobs_mode.py hold to
transformers): the transformers backend (``model_impl="transformers"``: transformers' own
modules around the Triton paged attention, in CUDA graphs) and the four ``logprobs_mode``s
(the values the sampler reports, here computed beside the one-pass CUDA sampling).

The comparison is the CPU engine, not transformers directly: the Triton kernels' float32 dots
run in tf32, so values differ from float32 by ~1e-3 and soft-capped models by more, and
greedy ids agree bar a rare near-tie. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PROMPTS = [[7], [11, 23, 5, 60, 2], list(range(30, 46)), [(i * 37) % 500 + 5 for i in range(41)]]
GPU = dict(device="cuda", dtype="float32", max_model_len=128, max_num_seqs=8, num_gpu_blocks_override=256)


def _run(llm: LLM, params: SamplingParams):
    return [o.outputs[0] for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)]


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_transformers_backend_matches_the_cpu_engine(checkpoint_factory, name):
    from pagedlm.models.transformers import TransformersForCausalLM

    path = checkpoint_factory(name)
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    cpu = [o.token_ids for o in _run(LLM(path, device="cpu", max_model_len=128, model_impl="transformers"), params)]
    llm = LLM(path, model_impl="transformers", **GPU)
    assert isinstance(llm.llm_engine.core_client.engine_core.executor.worker.runner.model, TransformersForCausalLM)
    gpu = [o.token_ids for o in _run(llm, params)]
    assert sum(a == b for a, b in zip(cpu, gpu)) >= len(PROMPTS) - 1, (cpu, gpu)


@pytest.mark.parametrize("mode", ["raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits"])
def test_logprobs_modes_match_the_cpu_engine(llama_checkpoint, mode):
    """Greedy with penalties and a temperature-free top-k: the reported values of the chosen
    token and the top 5 equal the CPU engine's within tf32's error."""
    params = SamplingParams(temperature=0, max_tokens=6, logprobs=5, ignore_eos=True, repetition_penalty=1.4,
                            presence_penalty=0.6)
    cpu = _run(LLM(llama_checkpoint, device="cpu", logprobs_mode=mode, max_model_len=128), params)
    gpu = _run(LLM(llama_checkpoint, logprobs_mode=mode, **GPU), params)
    compared = 0
    for c, g in zip(cpu, gpu):
        for tc, tg, lc, lg in zip(c.token_ids, g.token_ids, c.logprobs, g.logprobs):
            if tc != tg:
                break  # a near-tie went the other way: the rest of the sequence differs
            assert len(set(lc) ^ set(lg)) <= 2, (lc, lg)  # the 5th place may swap on a near-tie
            for token in set(lc) & set(lg):
                assert lg[token].logprob == pytest.approx(lc[token].logprob, abs=2e-2), (mode, token)
                compared += 1
    assert compared >= 60
