"""`pagedlm bench ...` flags as `vllm bench ...` takes them, checked when parsed: a bad value
stops the command before it sends a request, not after the whole run."""

from __future__ import annotations

import argparse

import pytest

from pagedlm.benchmarks import serve as bench_serve


def _serve_args(*argv: str) -> argparse.Namespace:
    return bench_serve.add_cli_args(argparse.ArgumentParser(prog="pagedlm bench serve")).parse_args(list(argv))


def test_bench_serve_metric_percentiles_are_checked_when_parsed(capsys: pytest.CaptureFixture) -> None:
    assert _serve_args().metric_percentiles == [99.0]
    assert _serve_args("--metric-percentiles", "50,90,99.9").metric_percentiles == [50.0, 90.0, 99.9]
    for bad in ("p99", "50,150", ""):
        with pytest.raises(SystemExit):
            _serve_args("--metric-percentiles", bad)
        assert "--metric-percentiles" in capsys.readouterr().err


@pytest.mark.parametrize("burstiness", ["0", "-1", "inf"])
def test_bench_serve_burstiness_must_be_positive(burstiness: str) -> None:
    """A gamma shape of 0 was random.gammavariate's ValueError, after the first request."""
    with pytest.raises(SystemExit, match="--burstiness must be positive"):
        bench_serve.main(_serve_args("--burstiness", burstiness, "--base-url", "http://127.0.0.1:9"))


def test_bench_serve_takes_vllms_backend_flag(capsys: pytest.CaptureFixture) -> None:
    """vllm bench serve --backend vllm (its documented launch line): the completions client;
    kinds of request it does not send are refused by name."""
    assert _serve_args().backend == "openai" and _serve_args("--backend", "vllm").backend == "vllm"
    with pytest.raises(SystemExit):
        _serve_args("--backend", "openai-chat")
    assert "invalid choice: 'openai-chat'" in capsys.readouterr().err
