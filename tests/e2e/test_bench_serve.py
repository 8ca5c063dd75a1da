"""`pagedlm bench serve` against the test server: exits 0, prints its table, saves JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from e2e_helpers import API_KEY, REPO_ROOT


def test_bench_serve(server, tmp_path) -> None:
    cmd = [
        sys.executable, "-m", "pagedlm", "bench", "serve", "--base-url", server.url, "--api-key", API_KEY,
        "--num-prompts", "8", "--random-input-len", "16", "--random-output-len", "6", "--ignore-eos",
        "--request-rate", "inf", "--max-concurrency", "4", "--save-result", "--result-dir", str(tmp_path),
        "--result-filename", "bench.json",
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for label in ("Successful requests:", "Failed requests:", "Request throughput (req/s):",
                  "Output token throughput (tok/s):", "Mean TTFT (ms):", "Median TPOT (ms):", "P99 ITL (ms):",
                  "Mean E2EL (ms):"):
        assert label in out, out
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["completed"] == 8 and result["failed"] == 0
    assert result["total_output_tokens"] == 8 * 6
    assert result["total_input_tokens"] == 8 * 16  # exact-length token-id prompts (tokenizer found)
    assert result["mean_ttft_ms"] > 0 and result["mean_e2el_ms"] >= result["mean_ttft_ms"]
