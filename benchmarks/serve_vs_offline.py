"""The server against the offline engine, same card, same workload (issue: serve at the
engine's speed). Starts `pagedlm serve` on a benchmark shape with dummy weights and runs
`pagedlm bench serve` at concurrency 1, at a fixed request rate and at rate inf (512 in /
256 out, --ignore-eos), then prints one table. Run the offline scripts beside it in the same
call (benchmarks/gpu_latency.py, benchmarks/compare_throughput.py --skip-hf).

python benchmarks/serve_vs_offline.py [--shape llama-3.1-8b] [--num-prompts 1000] [--rate 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from pagedlm.benchmarks.shapes import make_shape_dir


def start_server(model_dir: Path, port: int, log_path: Path, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pagedlm", "serve", str(model_dir), "--load-format", "dummy", "--port", str(port),
           "--max-model-len", "1024", "--served-model-name", "bench", "--disable-uvicorn-access-log", *extra]
    log = open(log_path, "wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError("server not healthy in time")


def bench(url: str, model_dir: Path, out_dir: Path, name: str, num_prompts: int, rate: str,
          concurrency: int | None, input_len: int, output_len: int, seed: int) -> dict:
    """One `pagedlm bench serve` run. Each run gets its own seed: runs with the same prompts
    would hit the prefix cache the run before filled and overstate the throughput."""
    cmd = [sys.executable, "-m", "pagedlm", "bench", "serve", "--base-url", url, "--tokenizer", str(model_dir),
           "--random-input-len", str(input_len), "--random-output-len", str(output_len), "--ignore-eos",
           "--num-prompts", str(num_prompts), "--request-rate", rate, "--metric-percentiles", "50,99",
           "--temperature", "1.0",  # as benchmarks/compare_throughput.py samples
           "--save-result", "--result-dir", str(out_dir), "--result-filename", f"{name}.json", "--seed", str(seed)]
    if concurrency is not None:
        cmd += ["--max-concurrency", str(concurrency)]
    subprocess.run(cmd, check=True)
    return json.loads((out_dir / f"{name}.json").read_text())


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """CPU seconds (user + system) so far of ``root`` and every process below it, by pid."""
    parent, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        frontier = [pid for pid, ppid in parent.items() if ppid in frontier and pid not in tree]
        tree.update(frontier)
    return {pid: cpu[pid] for pid in tree if pid in cpu}


def busy_cores(before: dict[int, float], after: dict[int, float], wall: float) -> list[float]:
    """Per process of the server, the cores it kept busy between two snapshots (largest first)."""
    return sorted(((after[pid] - before.get(pid, 0.0)) / wall for pid in after), reverse=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama-3.1-8b")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--concurrency-1-prompts", type=int, default=16)
    p.add_argument("--rate", type=float, default=16.0, help="the fixed-rate run's req/s (0: skip that run)")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--port", type=int, default=8321)
    p.add_argument("--out-dir", default=os.environ.get("OUT", "."))
    p.add_argument("--server-args", default="", help="extra `pagedlm serve` flags, space separated")
    args = p.parse_args()
    out_dir = Path(args.out_dir)
    model_dir = make_shape_dir(args.shape, tempfile.mkdtemp())
    url = f"http://127.0.0.1:{args.port}"
    proc = start_server(model_dir, args.port, out_dir / "server.log", args.server_args.split())
    runs = {}
    try:
        wait_healthy(url, proc, 600)
        common = dict(input_len=args.input_len, output_len=args.output_len)
        runs["concurrency 1"] = bench(url, model_dir, out_dir, "c1", args.concurrency_1_prompts, "inf", 1, seed=1,
                                     **common)
        if args.rate > 0:
            runs[f"rate {args.rate:g}"] = bench(url, model_dir, out_dir, "rate", args.num_prompts, str(args.rate),
                                                None, seed=2, **common)
        cpu_before, client_before, t0 = tree_cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN), \
            time.monotonic()
        runs["rate inf"] = bench(url, model_dir, out_dir, "inf", args.num_prompts, "inf", None, seed=3, **common)
        wall = time.monotonic() - t0
        client = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cores = busy_cores(cpu_before, tree_cpu_seconds(proc.pid), wall)
        client_cores = (client.ru_utime + client.ru_stime - client_before.ru_utime - client_before.ru_stime) / wall
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"\n{'run':<14} {'done':>5} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} "
          f"{'TPOT p99':>9} {'ITL p50':>8} {'ITL p99':>8}  (ms)")
    for name, r in runs.items():
        print(f"{name:<14} {r['completed']:>5} {r['output_throughput']:>10.1f} {r['median_ttft_ms']:>9.2f} "
              f"{r['p99_ttft_ms']:>9.2f} {r['median_tpot_ms']:>9.2f} {r['p99_tpot_ms']:>9.2f} "
              f"{r['median_itl_ms']:>8.2f} {r['p99_itl_ms']:>8.2f}")
    if "rate inf" in runs:
        print("rate inf, cores busy: server processes " + " ".join(f"{c:.2f}" for c in server_cores if c >= 0.05)
              + f"; bench client {client_cores:.2f}")


if __name__ == "__main__":
    main()
