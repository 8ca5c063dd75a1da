"""Does the first workload after start-up pay for Triton compiles? (one process, fresh cache)

Starts the offline engine on an empty Triton cache, then runs the same workload several
times in the same process and reports, per phase (start-up, run 1, run 2, ...), the Triton
kernels compiled (from Triton's jit cache hook: every in-memory cache miss) with the time
each compile took, and the throughput of each run. Kernels compiled during a run instead of
at start-up are specializations the warm-up did not reach (a new value of an int argument's
divisibility, a new constexpr); each costs a compile (hundreds of ms) inside the serving path.

    PYTHONPATH=. python3 benchmarks/gpu_first_run.py --shape llama-3.1-8b --num-prompts 1000 \
        --input-len 512 --output-len 256 --runs 0 0 0.5
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import tempfile
import time

_ARG_SPLIT = re.compile(r", (?=\w+: )")  # Triton's "name: spec, name: spec" (specs hold ", " themselves)


class CompileLog:
    """Triton compiles by phase, through its jit cache hooks: (kernel repr, seconds)."""

    def __init__(self) -> None:
        import triton

        self.phase = "start-up"
        self.compiles: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
        self._started: dict[tuple[str, str], float] = {}
        runtime = triton.knobs.runtime
        if hasattr(runtime, "jit_post_compile_hook"):
            runtime.jit_cache_hook, runtime.jit_post_compile_hook = self._before, self._after
        else:  # older Triton: one hook, before the compile (durations unknown)
            runtime.jit_cache_hook = self._after

    def _before(self, *, key, fn, **_) -> None:
        self._started[(fn.name, str(key))] = time.perf_counter()

    def _after(self, *, key, repr, fn, **_) -> None:  # noqa: A002 - Triton's keyword name
        t0 = self._started.pop((fn.name, str(key)), None)
        self.compiles[self.phase].append((repr, time.perf_counter() - t0 if t0 else float("nan")))

    def explain(self, kernel_repr: str) -> str:
        """A run-time compile against the start-up's compiles of the same kernel: the arguments
        its nearest start-up variant differs in, or that start-up never compiled it."""
        kernel, _, args = kernel_repr.partition("](")
        variants = [set(_ARG_SPLIT.split(c.partition("](")[2])) for c, _ in self.compiles["start-up"]
                    if c.partition("](")[0] == kernel]
        name = kernel.partition("[")[0]
        if not variants:
            return f"{name}: not compiled at start-up"
        new = min(([a for a in _ARG_SPLIT.split(args) if a not in v] for v in variants), key=len)
        return f"{name}: args unlike its nearest start-up variant: {new}"


def print_report(log: CompileLog, rows: list[tuple[str, float, float | None]]) -> None:
    print("\n| phase | seconds | out tok/s | Triton compiles | compile s |")
    print("|---|---|---|---|---|")
    for name, secs, tps in rows:
        c = log.compiles.get(name, [])
        print(f"| {name} | {secs:.1f} | {'' if tps is None else f'{tps:,.0f}'} | {len(c)} | {sum(s for _, s in c):.1f} |")
    by_kernel: dict[str, list[float]] = collections.defaultdict(list)
    for r, s in log.compiles.get("start-up", []):
        by_kernel[r.partition("[")[0]].append(s)
    print("  start-up: " + ", ".join(f"{k} {len(v)} ({sum(v):.1f} s)" for k, v in
                                      sorted(by_kernel.items(), key=lambda kv: -sum(kv[1]))))
    for name, _, _ in rows[1:]:
        for r, s in log.compiles.get(name, []):
            print(f"  {name}: {s:.2f} s  {log.explain(r)}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama-3.1-8b")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--runs", type=float, nargs="+", default=[0.0, 0.0, 0.5],
                   help="one run per value: its --random-range-ratio (each run its own prompts: no prefix-cache hits)")
    p.add_argument("--keep-cache", action="store_true", help="use the usual Triton cache (default: an empty one)")
    args = p.parse_args()
    if not args.keep_cache:
        os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-cache-")

    from pagedlm import LLM
    from pagedlm.benchmarks.datasets import random_requests
    from pagedlm.benchmarks.shapes import SHAPES, make_shape_dir
    from pagedlm.benchmarks.throughput import time_generate

    log = CompileLog()
    model_dir = make_shape_dir(args.shape, tempfile.mkdtemp())
    t0 = time.perf_counter()
    llm = LLM(model=str(model_dir), load_format="dummy",
              max_model_len=int(args.input_len * 1.5 + args.output_len * 1.5) + 16)
    rows: list[tuple[str, float, float | None]] = [("start-up", time.perf_counter() - t0, None)]
    for i, ratio in enumerate(args.runs, 1):
        log.phase = f"run {i} (ratio {ratio})"
        reqs = random_requests(args.num_prompts, args.input_len, args.output_len, ratio,
                               SHAPES[args.shape]["vocab_size"], seed=i)
        r = time_generate(llm, reqs)
        rows.append((log.phase, r["elapsed_s"], r["output_tokens_per_s"]))
    print_report(log, rows)


if __name__ == "__main__":
    main()
