"""vLLM's batch defaults (max_num_seqs, max_num_batched_tokens) by device, GPU size and usage
context, and the decode batch sizes captured as CUDA graphs."""

from __future__ import annotations

import pytest

import pagedlm.engine_args as engine_args_module
from pagedlm.engine_args import EngineArgs, ServerEngineArgs
from pagedlm.worker.cuda_graphs import capture_sizes


@pytest.mark.parametrize(("device", "large", "context", "expect"), [
    ("cuda", True, "llm", (1024, 16384)),
    ("cuda", True, "server", (1024, 8192)),
    ("cuda", False, "llm", (256, 8192)),
    ("cuda", False, "server", (256, 8192)),
    ("cpu", False, "llm", (256, 2048)),
])
def test_defaults_follow_device_and_usage_context(monkeypatch, device, large, context, expect) -> None:
    monkeypatch.setattr(engine_args_module, "is_large_gpu", lambda: large)
    cls = ServerEngineArgs if context == "server" else EngineArgs
    assert cls(model="m")._batch_defaults(device) == expect


def test_given_values_win(monkeypatch) -> None:
    monkeypatch.setattr(engine_args_module, "is_large_gpu", lambda: True)
    args = EngineArgs(model="m", max_num_seqs=64, max_num_batched_tokens=4096)
    assert args._batch_defaults("cuda") == (64, 4096)
    assert EngineArgs(model="m", max_num_seqs=8)._batch_defaults("cuda") == (8, 16384)


def test_cpu_engine_config_takes_the_small_defaults(tmp_path) -> None:
    from pagedlm.demo import build_tiny_checkpoint

    sched = EngineArgs(model=str(build_tiny_checkpoint(tmp_path)), device="cpu").create_engine_config().scheduler_config
    assert (sched.max_num_seqs, sched.max_num_batched_tokens) == (256, 2048)


def test_max_num_seqs_below_one_is_refused(tmp_path) -> None:
    from pagedlm.config import ConfigError
    from pagedlm.demo import build_tiny_checkpoint

    with pytest.raises(ConfigError, match="max_num_seqs"):
        EngineArgs(model=str(build_tiny_checkpoint(tmp_path)), device="cpu", max_num_seqs=0).create_engine_config()


def test_capture_sizes_follow_vllm_and_stop_at_512() -> None:
    assert capture_sizes(256) == [1, 2, 4, *range(8, 257, 8)]
    assert capture_sizes(1024) == [1, 2, 4, *range(8, 257, 8), *range(272, 513, 16)]
    assert capture_sizes(300) == [1, 2, 4, *range(8, 257, 8), 272, 288, 300]
    assert capture_sizes(3) == [1, 2, 3]
    assert capture_sizes(12) == [1, 2, 4, 8, 12]
