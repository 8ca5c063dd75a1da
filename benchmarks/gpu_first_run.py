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

    import triton

    from pagedlm import LLM, SamplingParams
    from pagedlm.benchmarks.datasets import random_requests
    from pagedlm.benchmarks.shapes import SHAPES, make_shape_dir

    phase = ["start-up"]
    compiles: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)
    started: dict[object, float] = {}

    def before(*, key, repr, fn, **_):  # noqa: A002 - Triton's keyword names
        started[(fn.name, str(key))] = time.perf_counter()
        return None

    def after(*, key, repr, fn, **_):  # noqa: A002
        t0 = started.pop((fn.name, str(key)), None)
        compiles[phase[0]].append((repr, time.perf_counter() - t0 if t0 else float("nan")))
        return None

    runtime = triton.knobs.runtime
    if not hasattr(runtime, "jit_post_compile_hook"):  # older Triton: one hook, before the compile
        runtime.jit_cache_hook = after
    else:
        runtime.jit_cache_hook, runtime.jit_post_compile_hook = before, after

    model_dir = make_shape_dir(args.shape, tempfile.mkdtemp())
    vocab = SHAPES[args.shape]["vocab_size"]
    t0 = time.perf_counter()
    llm = LLM(model=str(model_dir), load_format="dummy",
              max_model_len=int(args.input_len * 1.5 + args.output_len * 1.5) + 16)
    start_s = time.perf_counter() - t0
    rows = [("start-up", start_s, None)]
    for i, ratio in enumerate(args.runs, 1):
        phase[0] = f"run {i} (ratio {ratio})"
        reqs = random_requests(args.num_prompts, args.input_len, args.output_len, ratio, vocab, seed=i)
        params = [SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=r.output_len, detokenize=False)
                  for r in reqs]
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": r.prompt_token_ids} for r in reqs], params, use_tqdm=False)
        dt = time.perf_counter() - t0
        rows.append((phase[0], dt, sum(len(o.outputs[0].token_ids) for o in outs) / dt))

    print("\n| phase | seconds | out tok/s | Triton compiles | compile s |")
    print("|---|---|---|---|---|")
    for name, secs, tps in rows:
        c = compiles.get(name, [])
        print(f"| {name} | {secs:.1f} | {'' if tps is None else f'{tps:,.0f}'} | {len(c)} | {sum(s for _, s in c):.1f} |")
    for name, _, _ in rows[1:]:
        for r, s in compiles.get(name, []):
            kernel, _, arg_list = r.partition("](")
            seen = [c for c, _ in compiles["start-up"] if c.partition("](")[0] == kernel]
            first = set(re.split(r", (?=\w+: )", seen[0].partition("](")[2])) if seen else set()
            new = [a for a in re.split(r", (?=\w+: )", arg_list) if a not in first]
            print(f"  {name}: {s:.2f} s  {kernel.partition('[')[0]}: "
                  + (f"args unlike its first start-up compile: {new}" if seen else "not compiled at start-up"))


if __name__ == "__main__":
    main()
