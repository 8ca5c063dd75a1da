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
        LLM, AsyncEngineArgs, AsyncLLMEngine, CompletionOutput, EmbeddingOutput, EmbeddingRequestOutput, EngineArgs,
        LLMEngine, PoolingOutput, PoolingParams, PoolingRequestOutput, PromptType, RequestOutput, SamplingParams,
        ScoringOutput, ScoringRequestOutput, TextPrompt, TokensPrompt, __version__, __version_tuple__)

    assert all(hasattr(pagedlm, name) for name in pagedlm.__all__)
    assert issubclass(AsyncEngineArgs, EngineArgs) and AsyncLLMEngine.__name__ == "AsyncLLM"
    assert __version_tuple__[:2] == tuple(int(p) for p in __version__.split(".")[:2])
    for name in ("ClassificationOutput", "ClassificationRequestOutput", "ModelRegistry", "initialize_ray_cluster"):
        with pytest.raises(ImportError, match=f"pagedlm has no {name}: .*not supported|pagedlm starts Ray"):
            exec(f"from pagedlm import {name}")


def test_async_engine_args_log_request_switches_say_they_have_no_effect(pagedlm_warnings: list[str]) -> None:
    from pagedlm import AsyncEngineArgs

    AsyncEngineArgs(model="/m", enable_log_requests=True).log_notices()
    assert any("--enable-log-requests has no effect" in w for w in pagedlm_warnings)
