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


def test_capture_sizes_follow_vllm_and_stop_at_1024() -> None:
    assert capture_sizes(256) == [1, 2, 4, *range(8, 257, 8)]
    assert capture_sizes(1024) == [1, 2, 4, *range(8, 257, 8), *range(272, 1025, 16)]
    assert capture_sizes(4096) == capture_sizes(1024)
    assert capture_sizes(300) == [1, 2, 4, *range(8, 257, 8), 272, 288, 300]
    assert capture_sizes(3) == [1, 2, 3]
    assert capture_sizes(12) == [1, 2, 4, 8, 12]


def test_cuda_graph_settings_resolve_like_vllm() -> None:
    from pagedlm.compilation import resolve_cuda_graph_sizes as resolve
    from pagedlm.config import ConfigError

    default = tuple(capture_sizes(256))
    assert resolve(256, None, None) == default == resolve(256, None, 3) == resolve(256, None, {"level": 3})
    assert resolve(1024, None, None)[-1] == 1024
    assert resolve(2048, None, None)[-1] == 1024  # the default list stops at MAX_CAPTURE_SIZE
    assert resolve(2048, None, {"max_cudagraph_capture_size": 2048})[-1] == 2048
    assert resolve(256, [32], None) == (1, 2, 4, 8, 16, 24, 32)  # one value: the largest size
    assert resolve(256, [1, 3, 300, 3], None) == (1, 3)  # several: the list, at most max_num_seqs
    assert resolve(256, None, {"cudagraph_capture_sizes": [4, 1]}) == (1, 4)
    assert resolve(64, None, {"max_cudagraph_capture_size": 600}) == tuple(capture_sizes(64))
    assert resolve(256, None, {"cudagraph_mode": "NONE"}) == () == resolve(256, None, {"use_cudagraph": False})
    assert resolve(256, None, {"cudagraph_mode": "FULL_AND_PIECEWISE"}) == default
    # -O0 is vLLM's "no optimization": no graphs either (unless a cudagraph_mode says otherwise)
    assert resolve(256, None, 0) == () == resolve(256, None, {"level": 0}) == resolve(256, None, {"mode": 0})
    assert resolve(256, None, {"level": 0, "cudagraph_mode": "FULL"}) == default
    for bad, needle in [({"cudagraph_capture_sizes": [0]}, "positive"), ({"no_such_key": 1}, "unknown key"),
                        ({"cudagraph_mode": "SOMETIMES"}, "cudagraph_mode"), ("3", "JSON object"),
                        ({"cudagraph_capture_sizes": [512]}, "at or below max_num_seqs")]:
        with pytest.raises(ConfigError, match=needle):
            resolve(256, None, bad)
    with pytest.raises(ConfigError, match="once"):
        resolve(256, [8], {"max_cudagraph_capture_size": 8})


def test_torch_compile_settings_log_that_they_have_no_effect() -> None:
    from pagedlm.compilation import compilation_notices

    lines = compilation_notices({"level": 3, "custom_ops": ["none"], "cudagraph_mode": "PIECEWISE",
                                 "cudagraph_capture_sizes": [1]})
    assert len(lines) == 3 and "'custom_ops'" in lines[0] and "'level'" in lines[1] and "FULL_DECODE_ONLY" in lines[2]
    assert compilation_notices(None) == [] == compilation_notices({"max_cudagraph_capture_size": 8})
    assert compilation_notices(0) == []  # level 0 has an effect (no graphs)


def test_dash_o_takes_a_level_or_json() -> None:
    from pagedlm.entrypoints.cli import parse_serve_args

    assert parse_serve_args(["/m", "-O3"]).compilation_config == 3
    assert parse_serve_args(["/m", "-O", '{"cudagraph_mode": "NONE"}']).compilation_config == {"cudagraph_mode": "NONE"}


def test_the_runner_takes_the_resolved_sizes(llama_checkpoint) -> None:
    from pagedlm import LLM

    llm = LLM(llama_checkpoint, device="cpu", max_model_len=64, max_num_seqs=64,
              compilation_config={"max_cudagraph_capture_size": 16})
    assert llm.llm_engine.engine_core.runner.decode_graph_sizes() == [1, 2, 4, 8, 16]
