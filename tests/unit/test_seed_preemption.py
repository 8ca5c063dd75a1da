"""Seeded sampling across preemption: "same seed, same output" (docs/offline.md) holds however
full the KV cache is. A request preempted (recompute) and resumed continues its random
stream where it stopped (vLLM keeps the generator too); it used to restart it, replaying
its first draws."""

from __future__ import annotations

import pytest

from pagedlm import LLM, SamplingParams

PROMPTS = [{"prompt_token_ids": [(i * 37 + j * 11) % 500 + 5 for j in range(24)]} for i in range(3)]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_seeded_output_independent_of_preemption(seeded_checkpoint, async_scheduling: bool) -> None:
    path = seeded_checkpoint("llama", 1)
    params = SamplingParams(temperature=1.0, seed=5, max_tokens=16, ignore_eos=True)
    plain = LLM(path, device="cpu")
    expected = [list(o.outputs[0].token_ids) for o in plain.generate(PROMPTS, params, use_tqdm=False)]
    # 20 blocks of 4 tokens for 3 sequences of 40: at least one is preempted and resumed.
    tight = LLM(path, device="cpu", block_size=4, num_gpu_blocks_override=20, max_model_len=64,
                async_scheduling=async_scheduling)
    got = [list(o.outputs[0].token_ids) for o in tight.generate(PROMPTS, params, use_tqdm=False)]
    assert tight.llm_engine.get_stats().num_preemptions_total > 0
    assert got == expected
