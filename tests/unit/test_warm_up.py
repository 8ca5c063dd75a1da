"""Start-up warm-up (pagedlm/engine/warm_up.py): its requests run through the real step path,
then nothing of them shows: not in the outputs, the counters, the prefix cache or the blocks."""

from __future__ import annotations

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.engine import warm_up

PROMPTS = [[5, 9, 13, 2, 7, 11], [3, 3, 8, 1], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57]]


def _llm(checkpoint: str, monkeypatch, on: bool, **kwargs) -> LLM:
    monkeypatch.setenv("PAGEDLM_WARM_UP", "1" if on else "0")
    return LLM(checkpoint, device="cpu", max_model_len=384, seed=7, **kwargs)


def _generate(llm: LLM) -> list[list[int]]:
    params = [SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
              SamplingParams(temperature=1.0, max_tokens=6, ignore_eos=True),  # the engine's generator
              SamplingParams(temperature=0.9, top_p=0.8, max_tokens=6, ignore_eos=True)]
    outputs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


@pytest.fixture(scope="module")
def cold(llama_checkpoint):
    with pytest.MonkeyPatch.context() as mp:
        llm = _llm(llama_checkpoint, mp, on=False)
    return _generate(llm)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_warm_up_leaves_no_trace(llama_checkpoint, cold, monkeypatch, async_scheduling):
    ran = []
    original = warm_up.run
    monkeypatch.setattr(warm_up, "run", lambda core, n: (original(core, n), ran.append(core.stats())))
    llm = _llm(llama_checkpoint, monkeypatch, on=True, async_scheduling=async_scheduling)
    core = llm.llm_engine.engine_core
    assert ran, "the warm-up did not run"
    assert ran[0].num_steps_total > 3 and ran[0].prefix_cache_hits_total > 0  # chunks after cached prefixes
    # Counters, prefix cache and block pool as on a cold engine.
    stats = core.stats()
    assert (stats.num_steps_total, stats.prefix_cache_queries_total, stats.prefix_cache_hits_total,
            stats.num_preemptions_total) == (0, 0, 0, 0)
    assert stats.num_free_blocks == stats.num_total_blocks
    assert not core.scheduler.kv.pool.cached
    # The runner still holds the warm-up rows; the first real step drops them.
    warm_ids = core.scheduler.finished_req_ids
    assert warm_ids and all(r.startswith(warm_up.REQUEST_ID_PREFIX) for r in warm_ids)
    assert warm_ids <= set(core.runner.requests)
    # Greedy and random sampling (the re-seeded generator) equal the cold engine's.
    assert _generate(llm) == cold
    assert not set(core.runner.requests) & warm_ids


def test_waves_cover_the_step_shapes(llama_checkpoint):
    """Batches of 1, 16 and others; a prefill past the prefill kernel's minimum; chunks after a
    cached prefix, added after the first step; every wave inside the engine's limits."""
    from pagedlm.engine_args import EngineArgs

    config = EngineArgs(llama_checkpoint, device="cpu", max_model_len=384, max_num_seqs=32).create_engine_config()
    one, prefill, batch = warm_up.waves(config, num_blocks=1000)
    assert (len(one.first), len(prefill.first), len(prefill.late), len(batch.first)) == (1, 4, 3, 16)
    assert [len(r.prompt_token_ids) for r in prefill.first] == [300] * 4
    for late, first in zip(prefill.late, prefill.first):
        assert late.prompt_token_ids[:288] == first.prompt_token_ids[:288]
        assert late.prompt_token_ids[288:] != first.prompt_token_ids[288:290]
    # Small limits shrink the waves rather than overflow them.
    config = EngineArgs(llama_checkpoint, device="cpu", max_model_len=64, max_num_seqs=2,
                        max_num_batched_tokens=64).create_engine_config()
    small = warm_up.waves(config, num_blocks=12)
    for wave in small:
        assert len(wave.first) + len(wave.late) <= 2
        assert all(len(r.prompt_token_ids) + warm_up.MAX_TOKENS < 64 for r in wave.first + wave.late)
    assert warm_up.waves(config, num_blocks=0) == []


def test_enabled(llama_checkpoint, monkeypatch):
    from pagedlm.engine_args import EngineArgs

    config = EngineArgs(llama_checkpoint, device="cpu").create_engine_config()
    monkeypatch.delenv("PAGEDLM_WARM_UP", raising=False)
    assert not warm_up.enabled(config)  # CPU: nothing to compile
    monkeypatch.setenv("PAGEDLM_WARM_UP", "1")
    assert warm_up.enabled(config)
    monkeypatch.setenv("PAGEDLM_WARM_UP", "yes")
    with pytest.raises(ValueError, match="PAGEDLM_WARM_UP"):
        warm_up.enabled(config)
