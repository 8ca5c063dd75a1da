"""The first requests a fresh `pagedlm serve` answers, with and without the start-up warm-up
(pagedlm/engine/warm_up.py, ``PAGEDLM_WARM_UP``).

Per setting: a server on a benchmark shape with dummy weights, on an empty Triton cache and
an empty tuning cache (a fresh machine), timed from launch to a healthy /health; then two
single short requests (TTFT, streamed) and two bursts of 8 concurrent 600-token prompts
(the slowest request's latency). Kernels the start-up did not compile, and first-use tuners it
did not run, land in these requests.

    PYTHONPATH=. python3 benchmarks/gpu_first_requests.py [--shape llama-3.1-8b] [--settings 1 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.serve_vs_offline import start_server, wait_healthy
from pagedlm.benchmarks.serve import send_request
from pagedlm.benchmarks.shapes import SHAPES, make_shape_dir


async def _send(url: str, prompts: list[list[int]], max_tokens: int) -> list[tuple[float, float]]:
    """Streams the prompts at once (``pagedlm bench serve``'s request); [(TTFT s, latency s)]."""
    async with httpx.AsyncClient(timeout=600) as client:
        results = await asyncio.gather(*(send_request(
            client, f"{url}/v1/completions", {"model": "bench", "prompt": prompt, "max_tokens": max_tokens,
                                              "stream": True, "ignore_eos": True}, len(prompt)) for prompt in prompts))
    failed = [r.error for r in results if not r.success]
    if failed:
        raise RuntimeError(f"requests failed: {failed[:3]}")
    return [(r.ttft, r.latency) for r in results]


def first_token_s(url: str, prompt: list[int], max_tokens: int) -> float:
    return asyncio.run(_send(url, [prompt], max_tokens))[0][0]


def burst_s(url: str, prompts: list[list[int]], max_tokens: int) -> float:
    """The slowest request's latency."""
    return max(latency for _, latency in asyncio.run(_send(url, prompts, max_tokens)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama-3.1-8b")
    p.add_argument("--settings", nargs="+", default=["1", "0"], help="PAGEDLM_WARM_UP values, one server each")
    p.add_argument("--port", type=int, default=8322)
    p.add_argument("--out-dir", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    model_dir = make_shape_dir(args.shape, tempfile.mkdtemp())
    vocab = SHAPES[args.shape]["vocab_size"]
    rng = random.Random(0)

    def prompt(n: int) -> list[int]:
        return [rng.randrange(1000, vocab - 1000) for _ in range(n)]

    url = f"http://127.0.0.1:{args.port}"
    rows = []
    for setting in args.settings:
        os.environ.update(PAGEDLM_WARM_UP=setting, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="triton-"),
                          PAGEDLM_CACHE_DIR=tempfile.mkdtemp(prefix="pagedlm-cache-"))
        t0 = time.perf_counter()
        proc = start_server(model_dir, args.port, Path(args.out_dir) / f"server-warm-up-{setting}.log", [])
        try:
            wait_healthy(url, proc, 600)
            healthy = time.perf_counter() - t0
            singles = [first_token_s(url, prompt(20), 16) for _ in range(2)]
            bursts = [burst_s(url, [prompt(600) for _ in range(8)], 16) for _ in range(2)]
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        rows.append((setting, healthy, *singles, *bursts))
    print("\n| PAGEDLM_WARM_UP | launch to healthy s | request 1 TTFT s | request 2 TTFT s "
          "| burst 1 (8 x 600) s | burst 2 s |")
    print("|---|---|---|---|---|---|")
    for setting, *values in rows:
        print(f"| {setting} | " + " | ".join(f"{v:.2f}" for v in values) + " |")


if __name__ == "__main__":
    main()
