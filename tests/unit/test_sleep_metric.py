"""vLLM's ``engine_sleep_state`` gauge: awake at the start, weights_offloaded / discard_all after
a level 1 / 2 sleep, awake again after wake_up (a partial wake_up leaves it asleep); set by
LLM.sleep / wake_up (get_metrics) and by AsyncLLM's (the server's /metrics), for every engine."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from pagedlm.engine.async_llm import AsyncLLM
from pagedlm.entrypoints.llm import LLM
from pagedlm.metrics import PrometheusStatLogger
from pagedlm.metrics_reader import Gauge

STATES = ("awake", "weights_offloaded", "discard_all")


def _states(registry: CollectorRegistry, engine: str = "0", model: str = "m") -> dict[str, float | None]:
    return {s: registry.get_sample_value("vllm:engine_sleep_state",
                                         {"model_name": model, "engine": engine, "sleep_state": s})
            for s in STATES}


def test_awake_from_the_start_and_each_level() -> None:
    logger = PrometheusStatLogger("m", registry=CollectorRegistry(), prefix="vllm:")
    assert _states(logger.registry) == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}
    logger.record_sleep_state(True, 1)
    assert _states(logger.registry) == {"awake": 0, "weights_offloaded": 1, "discard_all": 0}
    logger.record_sleep_state(False, 1)
    assert _states(logger.registry) == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}
    logger.record_sleep_state(True, 2, num_engines=2)
    for engine in ("0", "1"):
        assert _states(logger.registry, engine) == {"awake": 0, "weights_offloaded": 0, "discard_all": 1}


def test_in_the_exposition_with_vllms_labels() -> None:
    from prometheus_client import generate_latest

    text = generate_latest(PrometheusStatLogger("m", registry=CollectorRegistry(), prefix="vllm:").registry).decode()
    assert "# TYPE vllm:engine_sleep_state gauge" in text
    assert 'vllm:engine_sleep_state{engine="0",model_name="m",sleep_state="awake"} 1.0' in text


def test_a_process_that_records_no_engine_stats_sets_no_default() -> None:
    logger = PrometheusStatLogger("m", registry=CollectorRegistry(), prefix="vllm:", engine_stats=False)
    assert _states(logger.registry) == {s: None for s in STATES}


class _FakeClient:
    num_engines = 2


def _fake_async_llm(logger: PrometheusStatLogger, asleep_after_wake: bool) -> AsyncLLM:
    engine = AsyncLLM.__new__(AsyncLLM)
    engine.config = SimpleNamespace(cache_config=SimpleNamespace(enable_sleep_mode=True))
    engine.client = _FakeClient()
    engine.stat_logger = logger
    engine._asleep, engine._sleep_level = False, 0

    async def call(method, *args):
        return [asleep_after_wake] * 2 if method == "is_sleeping" else [None] * 2

    engine._call = call
    return engine


def test_async_llm_sleep_and_wake_up_set_it_for_every_engine() -> None:
    logger = PrometheusStatLogger("m", registry=CollectorRegistry(), prefix="vllm:")
    engine = _fake_async_llm(logger, asleep_after_wake=False)
    asyncio.run(engine.sleep(2))
    for e in ("0", "1"):
        assert _states(logger.registry, e) == {"awake": 0, "weights_offloaded": 0, "discard_all": 1}
    asyncio.run(engine.wake_up())
    for e in ("0", "1"):
        assert _states(logger.registry, e) == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}


def test_async_llm_partial_wake_up_stays_asleep() -> None:
    logger = PrometheusStatLogger("m", registry=CollectorRegistry(), prefix="vllm:")
    engine = _fake_async_llm(logger, asleep_after_wake=True)
    asyncio.run(engine.sleep(1))
    asyncio.run(engine.wake_up(["weights"]))
    assert _states(logger.registry) == {"awake": 0, "weights_offloaded": 1, "discard_all": 0}


@pytest.fixture(scope="module")
def llm(llama_checkpoint):
    engine = LLM(llama_checkpoint, device="cpu", enable_sleep_mode=True, num_gpu_blocks_override=16,
                 max_model_len=64)
    yield engine
    engine.llm_engine.shutdown()


def _offline_states(llm: LLM) -> dict[str, float]:
    return {m.labels["sleep_state"]: m.value for m in llm.get_metrics()
            if m.name == "vllm:engine_sleep_state" and isinstance(m, Gauge)}


def test_llm_get_metrics_follows_sleep_and_wake_up(llm: LLM) -> None:
    assert _offline_states(llm) == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}
    llm.sleep(level=1)
    try:
        assert _offline_states(llm) == {"awake": 0, "weights_offloaded": 1, "discard_all": 0}
        llm.wake_up(tags=["weights"])
        assert _offline_states(llm) == {"awake": 0, "weights_offloaded": 1, "discard_all": 0}
    finally:
        llm.wake_up()
    assert _offline_states(llm) == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}
    llm.sleep(level=2)
    try:
        assert _offline_states(llm) == {"awake": 0, "weights_offloaded": 0, "discard_all": 1}
    finally:
        llm.wake_up()
        llm.collective_rpc("reload_weights")
    assert _offline_states(llm) == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}
