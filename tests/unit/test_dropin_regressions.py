"""Regressions for issue #16's findings that need no model: the preemption warning on CPU,
bench serve's SSE reader, the metrics prefix, beam scores."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import AsyncIterator

import pytest

from pagedlm.beam_search import BeamSearchSequence, beam_score
from pagedlm.benchmarks.serve import sse_lines
from pagedlm.config import CacheConfig, SchedulerConfig
from pagedlm.engine.messages import ModelRunnerOutput
from pagedlm.engine.request import Request
from pagedlm.engine.scheduler import Scheduler
from pagedlm.metrics import PrometheusStatLogger
from pagedlm.sampling_params import SamplingParams


def test_preemption_warning_names_the_cpu_setting(caplog: pytest.LogCaptureFixture) -> None:
    hint = "raise --kv-cache-memory-bytes"  # what EngineArgs sets on CPU
    sched = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=64),
                      CacheConfig(block_size=4, memory_hint=hint), num_blocks=4)
    for i in range(2):  # two 8-token prompts fill the 4 blocks; their 9th tokens need a 5th
        sched.add_request(Request(f"r{i}", list(range(10 * i + 3, 10 * i + 11)), SamplingParams(max_tokens=20), None))
    logger = logging.getLogger("pagedlm")
    logger.addHandler(caplog.handler)
    try:
        for _ in range(3):
            out = sched.schedule()
            ids = list(out.num_scheduled_tokens)
            sched.update_from_output(out, ModelRunnerOutput(req_ids=ids, sampled_token_ids=[[7] for _ in ids]))
    finally:
        logger.removeHandler(caplog.handler)
    warnings = [r.getMessage() for r in caplog.records if "preempted" in r.getMessage()]
    assert warnings and all(hint in w and "gpu_memory_utilization" not in w for w in warnings)


def test_engine_args_pick_the_memory_hint_for_the_device(tmp_path) -> None:
    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.engine_args import EngineArgs

    ckpt = build_tiny_checkpoint(tmp_path)
    hint = EngineArgs(model=str(ckpt), device="cpu").create_engine_config().cache_config.memory_hint
    assert "--kv-cache-memory-bytes" in hint and "gpu" not in hint


def test_sse_reader_splits_only_at_lf_and_crlf() -> None:
    event = json.dumps({"choices": [{"text": "a\u0085b\u2028c\x1cd"}]}, ensure_ascii=False)
    stream = f"data: {event}\r\n\r\ndata: [DONE]\n\n"

    async def chunks() -> AsyncIterator[str]:
        for i in range(0, len(stream), 7):  # arbitrary chunk boundaries
            yield stream[i:i + 7]

    async def collect() -> list[str]:
        return [line async for line in sse_lines(chunks())]

    lines = asyncio.run(collect())
    assert lines == [f"data: {event}", "", "data: [DONE]", ""]
    assert json.loads(lines[0][6:])["choices"][0]["text"] == "a\u0085b\u2028c\x1cd"


def test_metrics_prefix_serves_the_same_series_under_vllm_names() -> None:
    pagedlm = PrometheusStatLogger("m").render().decode()
    vllm = PrometheusStatLogger("m", prefix="vllm:").render().decode()
    names = lambda text, p: sorted(  # noqa: E731
        line.split(" ")[2].removeprefix(p) for line in text.splitlines() if line.startswith(f"# TYPE {p}"))
    assert names(pagedlm, "pagedlm:") == names(vllm, "vllm:")
    assert "vllm:iteration_tokens_total" in vllm and "process_cpu_seconds_total" in vllm
    with pytest.raises(ValueError):
        PrometheusStatLogger("m", prefix="other:")


# Every series vLLM's examples/online_serving/prometheus_grafana/grafana.json queries.
VLLM_DASHBOARD_SERIES = (
    "e2e_request_latency_seconds_bucket", "e2e_request_latency_seconds_sum", "e2e_request_latency_seconds_count",
    "prompt_tokens_total", "generation_tokens_total",
    "time_per_output_token_seconds_bucket", "time_per_output_token_seconds_sum", "time_per_output_token_seconds_count",
    "num_requests_running", "num_requests_waiting",
    "time_to_first_token_seconds_bucket", "time_to_first_token_seconds_sum", "time_to_first_token_seconds_count",
    "gpu_cache_usage_perc", "request_prompt_tokens_bucket", "request_generation_tokens_bucket",
    "request_success_total", "request_queue_time_seconds_sum", "request_prefill_time_seconds_sum",
    "request_decode_time_seconds_sum", "request_max_num_generation_tokens_sum",
)


def _samples(text: str) -> dict[str, float]:
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in text.splitlines() if line and not line.startswith("#")}


def _fake_engine_config(max_model_len: int):
    from types import SimpleNamespace

    cache = CacheConfig(block_size=16)
    return SimpleNamespace(model_config=SimpleNamespace(max_model_len=max_model_len), cache_config=cache,
                           lora_config=None)


def test_vllm_prefix_serves_every_dashboard_series_with_vllm_labels_and_buckets() -> None:
    from pagedlm.engine.messages import SchedulerStats
    from pagedlm.engine.output_processor import FinishedRequestStats, IterationStats

    prom = PrometheusStatLogger("m", prefix="vllm:", engine_config=_fake_engine_config(1000))
    prom.record_engine_stats(0, SchedulerStats(num_running_reqs=2, num_waiting_reqs=1, kv_cache_usage=0.25,
                                               prefix_cache_queries_total=32, prefix_cache_hits_total=16,
                                               num_steps_total=1, last_step_num_tokens=40))
    prom.record_engine_stats(1, SchedulerStats(num_running_reqs=1, kv_cache_usage=0.5, num_preemptions_total=1))
    finished = FinishedRequestStats(finish_reason="length", e2e_latency=1.2, num_prompt_tokens=30,
                                    num_generation_tokens=4, queue_time=0.1, prefill_time=0.2, decode_time=0.9,
                                    mean_time_per_output_token=0.3, max_tokens_param=4)
    prom.record_iteration(IterationStats(engine_index=1, num_prompt_tokens=60, num_generation_tokens=8,
                                         time_to_first_tokens=[0.3], inter_token_latencies=[0.3, 0.3],
                                         finished_requests=[finished, finished], n_params=[2],
                                         max_num_generation_tokens=[4]))
    text = prom.render().decode()
    values = _samples(text)
    names = {key.split("{", 1)[0] for key in values}
    assert not [s for s in VLLM_DASHBOARD_SERIES if "vllm:" + s not in names]
    # vLLM's labels: model_name and engine on every engine series, per engine core.
    assert all('model_name="m"' in key and "engine=" in key for key in values
               if key.startswith("vllm:") and not key.startswith("vllm:cache_config_info"))  # as vLLM's
    one = lambda name, engine, extra="": values[f'vllm:{name}{{engine="{engine}",{extra}model_name="m"}}']  # noqa: E731
    assert one("num_requests_running", 0) == 2 and one("num_requests_running", 1) == 1
    assert one("kv_cache_usage_perc", 1) == 0.5 == one("gpu_cache_usage_perc", 1)
    assert one("prefix_cache_hits_total", 0) == 16 and one("num_preemptions_total", 1) == 1
    assert one("iteration_tokens_total_sum", 0) == 40
    assert one("prompt_tokens_total", 1) == 60 and one("generation_tokens_total", 1) == 8
    assert one("request_success_total", 1, 'finished_reason="length",') == 2
    assert one("request_success_total", 0, 'finished_reason="stop",') == 0
    assert one("request_params_n_sum", 1) == 2 and one("request_max_num_generation_tokens_sum", 1) == 4
    assert one("request_params_max_tokens_count", 1) == 2
    assert one("time_per_output_token_seconds_count", 1) == 2 == one("inter_token_latency_seconds_count", 1)
    assert one("request_inference_time_seconds_sum", 1) == pytest.approx(2 * 1.1)
    assert 'vllm:cache_config_info{block_size="16"' in text and 'engine="1"' in text.split("cache_config_info{")[-1]
    # vLLM's buckets: token counts 1, 2, 5, ... up to max_model_len; n 1..20.
    les = lambda name: [key.split('le="')[1].split('"')[0]  # noqa: E731
                        for key in values if key.startswith(f"vllm:{name}_bucket") and 'engine="0"' in key]
    assert les("request_prompt_tokens") == ["1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "200.0", "500.0",
                                            "1000.0", "+Inf"]
    assert les("request_params_max_tokens") == les("request_max_num_generation_tokens") == \
        les("request_generation_tokens") == les("request_prompt_tokens")
    assert les("request_params_n") == ["1.0", "2.0", "5.0", "10.0", "20.0", "+Inf"]


def test_output_processor_reports_n_and_max_generated_once_per_request() -> None:
    from pagedlm.engine.output_processor import IterationStats, _observe_finished

    from types import SimpleNamespace

    children = {"a": SimpleNamespace(num_generated=3, timing=None), "b": SimpleNamespace(num_generated=5, timing=None)}
    parent = SimpleNamespace(children=children, is_pooling=False, finished=False)
    stats = IterationStats()
    import pagedlm.engine.output_processor as op

    real, op._finished_stats = op._finished_stats, lambda p, c, now: "stats"
    try:
        _observe_finished(parent, children["a"], 0.0, stats)
        assert stats.n_params == [] and stats.finished_requests == ["stats"]
        parent.finished = True
        _observe_finished(parent, children["b"], 0.0, stats)
    finally:
        op._finished_stats = real
    assert stats.n_params == [2] and stats.max_num_generation_tokens == [5]


def test_beam_score_applies_length_penalty_without_counting_eos() -> None:
    seq = BeamSearchSequence(tokens=[1, 2, 3, 9], cum_logprob=-6.0)
    assert beam_score(seq, eos_token_id=9, length_penalty=1.0) == -2.0
    assert beam_score(seq, eos_token_id=None, length_penalty=1.0) == -1.5
    assert beam_score(seq, eos_token_id=9, length_penalty=0.0) == -6.0
    # A length penalty so large that len ** penalty overflows: the score goes to 0, no OverflowError.
    assert beam_score(seq, eos_token_id=9, length_penalty=1e308) == 0.0
    from pagedlm.sampling_params import BeamSearchParams

    with pytest.raises(ValueError, match="length_penalty"):
        BeamSearchParams(beam_width=2, max_tokens=4, length_penalty=float("inf"))


def test_vllm_logging_environment_variables():
    """VLLM_LOGGING_LEVEL sets the level as PAGEDLM_LOGGING_LEVEL does (pagedlm's wins);
    VLLM_CONFIGURE_LOGGING=0 leaves the logger unconfigured (no handler, the root's level)."""
    import os
    import subprocess
    import sys

    probe = "import logging, pagedlm; l = logging.getLogger('pagedlm'); print(l.level, len(l.handlers))"

    def run(**env):
        clean = {k: v for k, v in os.environ.items() if not k.endswith(("_LOGGING_LEVEL", "_CONFIGURE_LOGGING"))}
        return subprocess.run([sys.executable, "-c", probe], env={**clean, **env}, capture_output=True, text=True,
                              check=True).stdout.split()

    assert run() == [str(logging.INFO), "1"]
    assert run(VLLM_LOGGING_LEVEL="debug") == [str(logging.DEBUG), "1"]
    assert run(VLLM_LOGGING_LEVEL="DEBUG", PAGEDLM_LOGGING_LEVEL="WARNING") == [str(logging.WARNING), "1"]
    assert run(VLLM_CONFIGURE_LOGGING="0") == [str(logging.NOTSET), "0"]


def test_vllms_top_level_names_import_from_pagedlm() -> None:
    """What `from vllm import ...` offers a script: importable from pagedlm, or an ImportError
    that says why (never a bare "cannot import name")."""
    import pagedlm
    from pagedlm import (  # noqa: F401
        LLM, AsyncEngineArgs, AsyncLLMEngine, ClassificationOutput, ClassificationRequestOutput, CompletionOutput,
        EmbeddingOutput, EmbeddingRequestOutput, EngineArgs,
        LLMEngine, PoolingOutput, PoolingParams, PoolingRequestOutput, PromptType, RequestOutput, SamplingParams,
        ScoringOutput, ScoringRequestOutput, TextPrompt, TokensPrompt, __version__, __version_tuple__)

    assert all(hasattr(pagedlm, name) for name in pagedlm.__all__)
    assert issubclass(AsyncEngineArgs, EngineArgs) and AsyncLLMEngine.__name__ == "AsyncLLM"
    assert __version_tuple__[:2] == tuple(int(p) for p in __version__.split(".")[:2])
    for name in ("ModelRegistry", "initialize_ray_cluster"):
        with pytest.raises(ImportError, match=f"pagedlm has no {name}: .*not supported|pagedlm starts Ray"):
            exec(f"from pagedlm import {name}")


def test_async_engine_args_log_request_switches_say_they_have_no_effect(pagedlm_warnings: list[str]) -> None:
    from pagedlm import AsyncEngineArgs

    AsyncEngineArgs(model="/m", enable_log_requests=True).log_notices()
    assert any("--enable-log-requests has no effect" in w for w in pagedlm_warnings)
