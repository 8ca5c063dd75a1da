"""``bench serve``'s report: the metrics of a run, the printed table and the saved JSON, in
vLLM's ``bench serve`` names (keys, labels, file name), so that scripts reading either work."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

METRICS = {"ttft": ("TTFT", "Time to First Token"), "tpot": ("TPOT", "Time per Output Token (excl. 1st token)"),
           "itl": ("ITL", "Inter-token Latency"), "e2el": ("E2EL", "End-to-end Latency")}
GOODPUT_METRICS = ("ttft", "tpot", "e2el")


@dataclass
class RequestResult:
    success: bool = False
    prompt_len: int = 0
    output_tokens: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    start_time: float = 0.0  # perf_counter when sent: the peak-throughput buckets
    generated_text: str = ""
    error: str = ""
    unreachable: bool = False  # the connection failed: the server may not be up yet


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0  # linear interpolation, as numpy.percentile
    low = int(math.floor(pos))
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def p_word(p: float) -> str:
    """99 -> '99', 99.9 -> '99.9' (vLLM's key and label spelling)."""
    return str(int(p)) if int(p) == p else str(p)


def _stats(name: str, values_s: list[float], percentiles: list[float]) -> dict[str, float]:
    ms = [v * 1000.0 for v in values_s]
    out = {f"mean_{name}_ms": statistics.fmean(ms) if ms else 0.0, f"median_{name}_ms": percentile(ms, 50),
           f"std_{name}_ms": statistics.pstdev(ms) if ms else 0.0}
    for p in percentiles:
        out[f"p{p_word(p)}_{name}_ms"] = percentile(ms, p)
    return out


def _peaks(ok: list[RequestResult]) -> tuple[float, int]:
    """vLLM's peak output tokens/s and the concurrent requests then, in one-second buckets."""
    if not ok:
        return 0.0, 0
    t0 = min(r.start_time for r in ok)
    num_buckets = int(math.ceil(max(r.start_time + r.latency for r in ok) - t0)) + 1
    tokens, active = [0] * num_buckets, [0] * num_buckets
    for r in ok:
        t = r.start_time + r.ttft
        for gap in [0.0, *r.itl]:
            t += gap
            if 0 <= int(t - t0) < num_buckets:
                tokens[int(t - t0)] += 1
        for second in range(int(r.start_time - t0), int(r.start_time + r.latency - t0) + 1):
            active[second] += 1
    return float(max(tokens)), int(max(active))


def summarize(results: list[RequestResult], duration: float, percentiles: list[float],
              goodput: dict[str, float] | None = None) -> dict[str, Any]:
    ok = [r for r in results if r.success]
    input_tokens = sum(r.prompt_len for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)
    tpot_of = {id(r): (r.latency - r.ttft) / (r.output_tokens - 1) if r.output_tokens > 1 else 0.0 for r in ok}
    rate = (lambda x: x / duration) if duration > 0 else (lambda x: 0.0)
    peak_tokens, peak_requests = _peaks(ok)
    metrics: dict[str, Any] = {
        "duration": duration, "completed": len(ok), "failed": len(results) - len(ok),
        "total_input_tokens": input_tokens, "total_output_tokens": output_tokens,
        "request_throughput": rate(len(ok)),
        "request_goodput": rate(_num_good(ok, tpot_of, goodput)) if goodput else None,
        "output_throughput": rate(output_tokens), "total_token_throughput": rate(input_tokens + output_tokens),
        "max_output_tokens_per_s": peak_tokens, "max_concurrent_requests": peak_requests,
    }
    metrics.update(_stats("ttft", [r.ttft for r in ok], percentiles))
    metrics.update(_stats("tpot", [tpot_of[id(r)] for r in ok if r.output_tokens > 1], percentiles))
    metrics.update(_stats("itl", [gap for r in ok for gap in r.itl], percentiles))
    metrics.update(_stats("e2el", [r.latency for r in ok], percentiles))
    return metrics


def _num_good(ok: list[RequestResult], tpot_of: dict[int, float], slos: dict[str, float]) -> int:
    """Requests within every service-level objective (ms); one output token counts as TPOT 0."""
    value = {"ttft": lambda r: r.ttft, "tpot": lambda r: tpot_of[id(r)], "e2el": lambda r: r.latency}
    return sum(all(value[k](r) <= slo / 1000.0 for k, slo in slos.items()) for r in ok)


def parse_goodput(pairs: list[str] | None) -> dict[str, float]:
    slos: dict[str, float] = {}
    for pair in pairs or []:
        name, sep, text = pair.partition(":")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or name not in GOODPUT_METRICS or not value >= 0:
            raise ValueError(f"--goodput {pair!r}: give KEY:MILLISECONDS pairs, KEY one of "
                             f"{', '.join(GOODPUT_METRICS)}, e.g. --goodput ttft:200 tpot:50")
        slos[name] = value
    return slos


def print_table(m: dict[str, Any], args: argparse.Namespace, selected: list[str], percentiles: list[float]) -> None:
    line = "{:<40} {:<10}".format
    num = "{:<40} {:<10.2f}".format
    print("{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="="))
    print(line("Successful requests:", m["completed"]))
    print(line("Failed requests:", m["failed"]))
    if args.max_concurrency is not None:
        print(line("Maximum request concurrency:", args.max_concurrency))
    if args.request_rate != float("inf") and args.ramp_up_strategy is None:
        print(num("Request rate configured (RPS):", args.request_rate))
    print(num("Benchmark duration (s):", m["duration"]))
    print(line("Total input tokens:", m["total_input_tokens"]))
    print(line("Total generated tokens:", m["total_output_tokens"]))
    print(num("Request throughput (req/s):", m["request_throughput"]))
    if m["request_goodput"] is not None:
        print(num("Request goodput (req/s):", m["request_goodput"]))
    print(num("Output token throughput (tok/s):", m["output_throughput"]))
    print(num("Peak output token throughput (tok/s):", m["max_output_tokens_per_s"]))
    print(num("Peak concurrent requests:", m["max_concurrent_requests"]))
    print(num("Total token throughput (tok/s):", m["total_token_throughput"]))
    for key in (k for k in METRICS if k in selected):
        short, title = METRICS[key]
        print("{s:{c}^{n}}".format(s=title, n=50, c="-"))
        print(num(f"Mean {short} (ms):", m[f"mean_{key}_ms"]))
        print(num(f"Median {short} (ms):", m[f"median_{key}_ms"]))
        for p in percentiles:
            print(num(f"P{p_word(p)} {short} (ms):", m[f"p{p_word(p)}_{key}_ms"]))
    print("=" * 50)


def result_record(args: argparse.Namespace, model_id: str, tokenizer_id: str | None, metrics: dict[str, Any],
                  results: list[RequestResult], selected: list[str], now: datetime) -> dict[str, Any]:
    """The saved JSON: vLLM's keys in vLLM's order; the per-request lists with --save-detailed."""
    record: dict[str, Any] = {
        "date": f"{now:%Y%m%d-%H%M%S}", "endpoint_type": args.backend, "backend": args.backend,
        "label": args.label, "model_id": model_id, "tokenizer_id": tokenizer_id, "num_prompts": args.num_prompts,
    }
    for item in args.metadata or []:
        key, _, value = item.partition("=")
        record[key.strip()] = value.strip()
    record.update({"request_rate": args.request_rate if args.request_rate < float("inf") else "inf",
                   "burstiness": args.burstiness, "max_concurrency": args.max_concurrency})
    if args.ramp_up_strategy is not None:
        record.update({"ramp_up_strategy": args.ramp_up_strategy, "ramp_up_start_rps": args.ramp_up_start_rps,
                       "ramp_up_end_rps": args.ramp_up_end_rps})
    record.update({k: metrics[k] for k in ("duration", "completed", "failed", "total_input_tokens",
                                            "total_output_tokens", "request_throughput", "request_goodput",
                                            "output_throughput", "total_token_throughput")})
    if args.save_detailed:
        record.update({"input_lens": [r.prompt_len for r in results], "output_lens": [r.output_tokens for r in results],
                       "ttfts": [r.ttft for r in results], "itls": [r.itl for r in results],
                       "generated_texts": [r.generated_text for r in results], "errors": [r.error for r in results]})
    record.update({"max_output_tokens_per_s": metrics["max_output_tokens_per_s"],
                   "max_concurrent_requests": metrics["max_concurrent_requests"]})
    for key in (k for k in METRICS if k in selected):
        record.update({k: v for k, v in metrics.items() if k.endswith(f"_{key}_ms")})
    return record


def save_result(args: argparse.Namespace, record: dict[str, Any], model_id: str) -> Path:
    """vLLM's file name, ``{label}-{rate}qps[-concurrencyN]-{model}-{date}.json``, unless
    --result-filename; --append-result adds one JSON line to the file."""
    concurrency = f"-concurrency{args.max_concurrency}" if args.max_concurrency is not None else ""
    label = args.label or args.backend
    if args.ramp_up_strategy is not None:
        rate = f"ramp-up-{args.ramp_up_strategy}-{args.ramp_up_start_rps}qps-{args.ramp_up_end_rps}qps"
    else:
        rate = f"{args.request_rate}qps"
    name = args.result_filename or f"{label}-{rate}{concurrency}-{model_id.split('/')[-1]}-{record['date']}.json"
    path = Path(args.result_dir or ".") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+" if args.append_result else "w", encoding="utf-8") as f:
        if args.append_result and f.tell() != 0:
            f.write("\n")
        json.dump(record, f)
    return path
