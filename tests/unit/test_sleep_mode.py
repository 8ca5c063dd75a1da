"""vLLM's sleep mode offline (LLM.sleep / wake_up, enable_sleep_mode) on CPU with a tiny
checkpoint: outputs after wake_up equal those before (level 1; level 2 after reload_weights),
the KV cache comes back whole and empty of prefixes, requests are refused while asleep."""

from __future__ import annotations

import pytest

from pagedlm.engine.sleep_mode import EngineSleepingError, SleepModeError
from pagedlm.entrypoints.llm import LLM
from pagedlm.sampling_params import SamplingParams

PROMPTS = ["The quick brown fox jumps over", "Once upon a time"]
NUM_BLOCKS = 32


@pytest.fixture(scope="module")
def llm(llama_checkpoint):
    engine = LLM(llama_checkpoint, device="cpu", enable_sleep_mode=True, num_gpu_blocks_override=NUM_BLOCKS,
                 max_model_len=128)
    yield engine
    engine.llm_engine.shutdown()


def _greedy(llm: LLM) -> list[list[int]]:
    outputs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _kv(llm: LLM):
    return llm.llm_engine.engine_core.scheduler.kv.pool


def test_level1_round_trip(llm: LLM) -> None:
    before = _greedy(llm)
    assert _kv(llm).cached  # the prompts' full blocks are cached prefixes
    assert not llm.llm_engine.is_sleeping()
    llm.sleep(level=1)
    assert llm.llm_engine.is_sleeping()
    runner = llm.llm_engine.engine_core.runner
    assert runner.kv_caches == [] and all(a.kv_cache is None for a in runner.model.attention_layers())
    assert not _kv(llm).cached  # sleeping resets the prefix cache
    assert _kv(llm).num_free_blocks == NUM_BLOCKS
    llm.wake_up()
    assert not llm.llm_engine.is_sleeping()
    assert _kv(llm).num_free_blocks == NUM_BLOCKS
    assert len(runner.kv_caches) == len(runner.model.attention_layers())
    assert _greedy(llm) == before


def test_requests_refused_while_asleep(llm: LLM) -> None:
    llm.sleep(1)
    try:
        with pytest.raises(EngineSleepingError, match="sleeping"):
            llm.generate(PROMPTS, SamplingParams(max_tokens=2), use_tqdm=False)
        assert not llm.llm_engine.has_unfinished_requests()
        assert _kv(llm).num_free_blocks == NUM_BLOCKS  # nothing leaked
    finally:
        llm.wake_up()


def test_sleep_refused_while_requests_run(llm: LLM) -> None:
    llm.llm_engine.add_request("busy", PROMPTS[0], SamplingParams(max_tokens=4))
    llm.llm_engine.step()
    with pytest.raises(SleepModeError, match="unfinished"):
        llm.sleep(1)
    assert not llm.llm_engine.is_sleeping()
    llm.llm_engine.abort_request("busy")
    while llm.llm_engine.has_unfinished_requests():
        llm.llm_engine.step()


def test_level2_needs_reload(llm: LLM) -> None:
    before = _greedy(llm)
    llm.sleep(level=2)
    llm.wake_up()  # the weights are zeros now: outputs differ
    assert _greedy(llm) != before
    llm.sleep(level=2)
    llm.wake_up(tags=["weights"])  # vLLM's RLHF order: weights, reload, then the KV cache
    assert llm.llm_engine.is_sleeping()  # the KV cache still sleeps
    assert llm.collective_rpc("reload_weights") == [None]
    llm.wake_up(tags=["kv_cache"])
    assert not llm.llm_engine.is_sleeping()
    assert _kv(llm).num_free_blocks == NUM_BLOCKS
    assert _greedy(llm) == before


def test_bad_arguments(llm: LLM) -> None:
    with pytest.raises(SleepModeError, match="level"):
        llm.sleep(level=3)
    with pytest.raises(SleepModeError, match="tags"):
        llm.wake_up(tags=["everything"])
    with pytest.raises(ValueError, match="unknown method"):
        llm.collective_rpc("shutdown")
    with pytest.raises(ValueError, match="timeout"):
        llm.collective_rpc("reload_weights", timeout=5.0)
    assert not llm.llm_engine.is_sleeping()


def test_sleep_needs_enable_sleep_mode(llama_checkpoint) -> None:
    plain = LLM(llama_checkpoint, device="cpu", num_gpu_blocks_override=8, max_model_len=64)
    try:
        with pytest.raises(SleepModeError, match="not enabled"):
            plain.sleep()
        with pytest.raises(SleepModeError, match="not enabled"):
            plain.wake_up()
        assert not plain.llm_engine.is_sleeping()
    finally:
        plain.llm_engine.shutdown()
