"""`pagedlm bench serve` against the test server, as `vllm bench serve` is run: exits 0,
prints vLLM's table, saves vLLM's JSON keys; the random dataset and ShareGPT from a local file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from e2e_helpers import API_KEY, REPO_ROOT

# The keys of vLLM's `bench serve --save-result` JSON at its default --percentile-metrics
# (ttft,tpot,itl) and --metric-percentiles (99), without --save-detailed.
VLLM_RESULT_KEYS = {
    "date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate",
    "burstiness", "max_concurrency", "duration", "completed", "failed", "total_input_tokens",
    "total_output_tokens", "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
    "max_output_tokens_per_s", "max_concurrent_requests",
    *(f"{stat}_{metric}_ms" for stat in ("mean", "median", "std", "p99") for metric in ("ttft", "tpot", "itl")),
}
DETAIL_KEYS = {"input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors"}


def _bench(server, tmp_path: Path, *flags: str) -> tuple[str, dict]:
    cmd = [sys.executable, "-m", "pagedlm", "bench", "serve", "--base-url", server.url, *flags,
           "--save-result", "--result-dir", str(tmp_path), "--result-filename", "bench.json"]
    env = {**os.environ, "OPENAI_API_KEY": API_KEY,
           "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads((tmp_path / "bench.json").read_text())


def test_bench_serve(server, tmp_path) -> None:
    """vLLM's random-dataset line; every metric and two percentiles; per-request details."""
    out, result = _bench(server, tmp_path, "--backend", "vllm", "--dataset-name", "random", "--num-prompts", "8",
                         "--random-input-len", "16", "--random-output-len", "6", "--request-rate", "inf",
                         "--max-concurrency", "4", "--percentile-metrics", "ttft,tpot,itl,e2el",
                         "--metric-percentiles", "50,99.9", "--save-detailed", "--metadata", "run=ci")
    for label in ("Successful requests:", "Failed requests:", "Maximum request concurrency:",
                  "Request throughput (req/s):", "Output token throughput (tok/s):",
                  "Peak output token throughput (tok/s):", "Mean TTFT (ms):", "Median TPOT (ms):",
                  "P99.9 ITL (ms):", "P50 E2EL (ms):"):
        assert label in out, out
    assert "Request rate configured" not in out  # vLLM prints it for a finite rate only
    assert result["completed"] == 8 and result["failed"] == 0
    # vLLM's random dataset runs to the requested length (ignore_eos) without --ignore-eos
    assert result["total_output_tokens"] == 8 * 6
    assert result["total_input_tokens"] == 8 * 16  # exact-length token-id prompts (tokenizer found)
    assert result["mean_ttft_ms"] > 0 and result["mean_e2el_ms"] >= result["mean_ttft_ms"]
    assert {"p50_ttft_ms", "p99.9_tpot_ms", "std_e2el_ms", *DETAIL_KEYS} <= set(result)
    assert result["run"] == "ci" and result["request_rate"] == "inf" and result["max_concurrency"] == 4
    assert result["input_lens"] == [16] * 8 and result["output_lens"] == [6] * 8
    assert all(result["generated_texts"]) and result["errors"] == [""] * 8


def test_bench_serve_sharegpt_file(server, tmp_path, checkpoint) -> None:
    """--dataset-name sharegpt --dataset-path FILE: the first turn is the prompt, counted with
    the model's tokenizer; conversations of one turn are skipped; the JSON has vLLM's keys."""
    from transformers import AutoTokenizer

    prompts = ["Tell me a story about the sea and the ships on it.",
               "What is the capital city of France, and why is it famous?",
               "Write a short poem about a cat sleeping in the sun."]
    entries = [{"id": str(i), "conversations": [{"from": "human", "value": p},
                                                {"from": "gpt", "value": "Here is a fairly long answer for you."}]}
               for i, p in enumerate(prompts)]
    entries.insert(1, {"id": "one-turn", "conversations": [{"from": "human", "value": "Only a question."}]})
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps(entries))
    out, result = _bench(server, tmp_path, "--dataset-name", "sharegpt", "--dataset-path", str(data),
                         "--num-prompts", "3", "--disable-shuffle", "--sharegpt-output-len", "5", "--ignore-eos",
                         "--request-rate", "50", "--seed", "1")
    assert "Request rate configured (RPS):" in out and "E2EL" not in out  # vLLM's default metrics
    assert set(result) == VLLM_RESULT_KEYS, set(result) ^ VLLM_RESULT_KEYS
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    assert result["completed"] == 3 and result["total_output_tokens"] == 3 * 5
    assert result["total_input_tokens"] == sum(len(tokenizer(p).input_ids) for p in prompts)
    assert result["request_rate"] == 50.0 and result["backend"] == "openai" and result["num_prompts"] == 3
