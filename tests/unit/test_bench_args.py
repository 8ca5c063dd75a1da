"""`pagedlm bench ...` flags as `vllm bench ...` takes them, checked when parsed: a bad value
stops the command before it sends a request, not after the whole run."""

from __future__ import annotations

import argparse
import random

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


@pytest.mark.parametrize("burstiness", ["0", "-1"])
def test_bench_serve_burstiness_must_be_positive(burstiness: str) -> None:
    """A gamma shape of 0 was random.gammavariate's ValueError, after the first request."""
    with pytest.raises(SystemExit, match="--burstiness must be positive"):
        bench_serve.main(_serve_args("--burstiness", burstiness, "--base-url", "http://127.0.0.1:9"))


def test_bench_serve_burstiness_inf_spaces_requests_evenly() -> None:
    """vLLM's burstiness inf: constant intervals of 1/rate."""
    from pagedlm.benchmarks.serve_workload import send_offsets

    args = _serve_args("--burstiness", "inf", "--request-rate", "4")
    bench_serve.check_args(args)
    offsets, rates = send_offsets(args, 4, random.Random(0))
    assert offsets == pytest.approx([0.25, 0.5, 0.75, 1.0]) and rates == [4.0] * 4


def test_bench_serve_takes_vllms_backend_flag(capsys: pytest.CaptureFixture) -> None:
    """vllm bench serve --backend vllm (its documented launch line): the completions client;
    kinds of request it does not send are refused by name."""
    assert _serve_args().backend == "openai" and _serve_args("--backend", "vllm").backend == "vllm"
    with pytest.raises(SystemExit):
        _serve_args("--backend", "openai-chat")
    assert "invalid choice: 'openai-chat'" in capsys.readouterr().err


def test_bench_serve_takes_vllms_dataset_flags() -> None:
    """A `vllm bench serve` line parses as it does there, with vLLM's defaults applied after:
    --input-len/--output-len set the dataset's lengths; the random dataset ignores EOS."""
    args = _serve_args("--dataset-name", "random", "--input-len", "64", "--output-len", "8", "--random-prefix-len",
                       "4", "--percentile-metrics", "ttft,e2el", "--metric-percentiles", "90,99",
                       "--goodput", "ttft:200", "tpot:50", "--header", "x-a=1", "--metadata", "tp=1")
    bench_serve.check_args(args)
    assert (args.random_input_len, args.random_output_len, args.sharegpt_output_len) == (64, 8, 8)
    assert args.ignore_eos and args.random_prefix_len == 4 and args.percentile_metrics == ["ttft", "e2el"]
    assert args.goodput_slos == {"ttft": 200.0, "tpot": 50.0}
    # pagedlm's own --dataset spelling stays
    assert _serve_args("--dataset", "sharegpt").dataset_name == "sharegpt"
    defaults = _serve_args()
    assert (defaults.dataset_name, defaults.random_input_len, defaults.random_output_len, defaults.num_prompts,
            defaults.temperature, defaults.ready_check_timeout_sec) == ("random", 1024, 128, 1000, None, 600)


@pytest.mark.parametrize("flags, message", [
    (["--dataset-path", "x.json"], "the random dataset makes its prompts"),
    (["--goodput", "ttft=200"], "--goodput 'ttft=200'"),
    (["--goodput", "itl:5"], "KEY one of ttft, tpot, e2el"),
    (["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1"], "needs --ramp-up-start-rps and --ramp-up-end-rps"),
    (["--ramp-up-strategy", "linear", "--ramp-up-start-rps", "1", "--ramp-up-end-rps", "5", "--request-rate", "3"],
     "drop --request-rate"),
    (["--ramp-up-end-rps", "5"], "take effect with --ramp-up-strategy"),
    (["--metadata", "novalue"], "--metadata 'novalue': give KEY=VALUE"),
])
def test_bench_serve_refuses_inconsistent_flags_before_sending(flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_serve.main(_serve_args("--base-url", "http://127.0.0.1:9", *flags))
    assert message in str(exc.value)


@pytest.mark.parametrize("argv, message", [
    (["bench", "serve", "--profile"], "--profile is not supported by pagedlm bench serve: the server-side profiler"),
    (["bench", "serve", "--sonnet-input-len", "5"], "--sonnet-input-len is not supported"),
    (["bench", "serve", "--dataset-name", "sonnet"], "invalid choice: 'sonnet'"),
    (["bench", "serve", "--percentile-metrics", "ttft,foo"], "give a comma-separated list of ttft,tpot,itl,e2el"),
    (["bench", "throughput", "--async-engine"], "--async-engine is not supported by pagedlm bench throughput"),
    (["bench", "throughput", "--backend", "hf"], "invalid choice: 'hf'"),
    (["bench", "latency", "--profile"], "--profile is not supported by pagedlm bench latency"),
])
def test_vllm_flags_pagedlm_lacks_are_refused_by_name(argv: list[str], message: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    from pagedlm.entrypoints.cli import make_parser

    with pytest.raises(SystemExit):
        make_parser(argv).parse_args(argv)
    assert message in capsys.readouterr().err


def test_bench_latency_and_throughput_take_vllms_flags_and_defaults() -> None:
    from pagedlm.entrypoints.cli import make_parser

    argv = ["bench", "latency"]
    ns = make_parser(argv).parse_args(argv)
    assert (ns.input_len, ns.output_len, ns.batch_size, ns.num_iters_warmup, ns.num_iters, ns.n) == (
        32, 128, 8, 10, 30, 1)  # vLLM's
    argv = ["bench", "throughput", "--dataset", "sg.json", "--dataset-name", "sharegpt", "--n", "2",
            "--disable-detokenize", "--prefix-len", "3", "--backend", "vllm"]
    ns = make_parser(argv).parse_args(argv)
    assert (ns.dataset, ns.dataset_name, ns.n, ns.disable_detokenize, ns.prefix_len) == (
        "sg.json", "sharegpt", 2, True, 3)


def test_send_offsets_follow_vllms_schedule() -> None:
    """A fixed rate: the gamma intervals are rescaled so the last request goes at n / rate; a
    linear ramp goes from the start rate to the end rate."""
    from pagedlm.benchmarks.serve_workload import send_offsets

    args = _serve_args("--request-rate", "10")
    bench_serve.check_args(args)
    offsets, _ = send_offsets(args, 50, random.Random(3))
    assert offsets[-1] == pytest.approx(5.0) and offsets == sorted(offsets)
    args = _serve_args("--ramp-up-strategy", "linear", "--ramp-up-start-rps", "2", "--ramp-up-end-rps", "6")
    bench_serve.check_args(args)
    _, rates = send_offsets(args, 5, random.Random(0))
    assert rates == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_random_prompts_share_the_prefix_and_stay_in_range() -> None:
    from pagedlm.benchmarks.datasets import DatasetError
    from pagedlm.benchmarks.serve_workload import random_prompts

    args = _serve_args("--num-prompts", "20", "--random-input-len", "10", "--random-output-len", "4",
                       "--random-range-ratio", "0.5", "--random-prefix-len", "3")
    prompts = random_prompts(args, None)  # no tokenizer: random words
    words = [p.prompt.split() for p in prompts]
    assert len({tuple(w[:3]) for w in words}) == 1
    assert all(3 + 5 <= len(w) <= 3 + 15 for w in words) and all(2 <= p.output_len <= 6 for p in prompts)
    with pytest.raises(DatasetError, match=r"must be in \[0, 1\)"):
        random_prompts(_serve_args("--random-range-ratio", "1"), None)


class _CharTokenizer:
    """One id per character (and a BOS): enough for the ShareGPT length filter."""

    def __call__(self, text: str) -> argparse.Namespace:
        return argparse.Namespace(input_ids=[0] + [ord(c) for c in text])


def test_sharegpt_samples_as_vllm(tmp_path) -> None:
    """Shuffled with the seed as vLLM (random.seed + random.shuffle), first turn as prompt,
    the reply's token count as output length, the length filter, oversampling."""
    import json

    from pagedlm.benchmarks.datasets import DatasetError, sharegpt_samples

    entries = [{"conversations": [{"value": f"question number {i}"}, {"value": "an answer" * (i + 1)}]}
               for i in range(6)]
    entries += [{"conversations": [{"value": "no reply"}]},  # one turn: dropped
                {"conversations": [{"value": "ab"}, {"value": "long enough"}]}]  # prompt of 3 ids: filtered
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(entries))
    samples = sharegpt_samples(str(path), _CharTokenizer(), 10, seed=5)
    expected = [e for e in entries if len(e["conversations"]) >= 2]
    random.seed(5)
    random.shuffle(expected)
    kept = [e for e in expected if e["conversations"][0]["value"] != "ab"]
    assert [s.prompt for s in samples[:6]] == [e["conversations"][0]["value"] for e in kept]
    assert samples[0].output_len == 1 + len(kept[0]["conversations"][1]["value"])
    assert len(samples) == 10  # oversampled
    assert len(sharegpt_samples(str(path), _CharTokenizer(), 10, output_len=2, oversample=False)) == 6
    with pytest.raises(DatasetError, match="pass --dataset-path"):
        sharegpt_samples(None, _CharTokenizer(), 1)


def test_serve_summary_has_vllms_derived_metrics() -> None:
    from pagedlm.benchmarks.serve_report import RequestResult, summarize

    results = [RequestResult(success=True, prompt_len=4, output_tokens=3, ttft=0.1, latency=0.3, itl=[0.1, 0.1],
                             start_time=0.0),
               RequestResult(success=True, prompt_len=4, output_tokens=3, ttft=0.5, latency=0.9, itl=[0.2, 0.2],
                             start_time=0.0),
               RequestResult(error="HTTP 500")]
    m = summarize(results, 1.0, [50.0], {"ttft": 200.0})
    assert (m["completed"], m["failed"], m["total_output_tokens"]) == (2, 1, 6)
    assert m["request_goodput"] == 1.0  # one request within TTFT 200 ms
    assert m["mean_ttft_ms"] == pytest.approx(300.0) and m["std_ttft_ms"] == pytest.approx(200.0)
    assert m["p50_tpot_ms"] == pytest.approx(150.0)
    assert (m["max_output_tokens_per_s"], m["max_concurrent_requests"]) == (6.0, 2)
    assert summarize(results, 1.0, [99.0])["request_goodput"] is None
