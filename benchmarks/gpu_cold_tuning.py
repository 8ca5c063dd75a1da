"""The load-time tuners on a cold Triton cache, with their candidates compiled side by side
(``pagedlm/kernels/precompile.py``) and one after another (``PAGEDLM_COMPILE_THREADS=1``).

Per setting, a fresh process with an empty Triton cache and the tuning cache off times
- the int4 tuner (``wna16_tuning.tune``) over the Llama-3.1-8B layers, 4-bit, group 128 (an
  AWQ / GPTQ checkpoint's start: every M bucket of every shape), and
- the 8-bit GEMV tuner (``scaled_gemv``, fp8 codes times fp8 codes) at M = 1, 2, 4, 8, 16 over
  the same layers (what an fp8 checkpoint's warm-up forwards trigger),
and prints each shape's seconds and the int4 tuner's choices (the settings should agree up to
timing noise). The CUDA C++ libraries are built first, outside the timings.

    PYTHONPATH=. python3 benchmarks/gpu_cold_tuning.py [--threads 1,16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SHAPES = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}  # (K, N)


def child() -> None:
    import torch

    from pagedlm.kernels import quant_reference as ref
    from pagedlm.kernels import scaled_gemv, wna16_tuning
    from pagedlm.kernels.quant_ops import gemm_for, quant_ops

    dev = torch.device("cuda")
    torch.manual_seed(0)
    out: dict = {"threads": os.environ.get("PAGEDLM_COMPILE_THREADS"), "int4_s": {}, "fp8_s": {}, "int4_choices": {}}
    for name, (k, n) in SHAPES.items():
        q = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device=dev)
        s = (torch.rand(k // 128, n, device=dev) * 0.01 + 0.001).to(torch.bfloat16)
        z = torch.randint(0, 16, (k // 128, n), device=dev).to(torch.bfloat16)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        wna16_tuning.tune(q, s, z, None, 128, 4)
        out["int4_s"][name] = round(time.perf_counter() - t0, 1)
        out["int4_choices"][name] = [wna16_tuning.describe(c) for _, c in wna16_tuning._TABLE[(n, k, 4, 128, False)]]
        print(f"int4 {name}: {out['int4_s'][name]} s", flush=True)
        del q, s, z
    ops = quant_ops(dev)
    for name, (k, n) in SHAPES.items():
        w, sw = ref.per_token_quant(torch.randn(n, k, device=dev), ref.FP8_DTYPE)
        sw = sw.reshape(1, -1).contiguous()
        gemm = gemm_for(ops, True, k, n)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for m in (1, 2, 4, 8, 16):
            a, sa = ref.per_token_quant(torch.randn(m, k, device=dev, dtype=torch.bfloat16), ref.FP8_DTYPE)
            scaled_gemv.scaled_gemv_or_none(a, w, sa, sw, torch.bfloat16, None,
                                            lambda aa, ss: gemm(aa, w.t(), ss, sw, torch.bfloat16))
        torch.cuda.synchronize()
        out["fp8_s"][name] = round(time.perf_counter() - t0, 1)
        print(f"fp8 {name}: {out['fp8_s'][name]} s", flush=True)
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", default="1,16", help="PAGEDLM_COMPILE_THREADS settings, in order")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child()
    import torch

    from pagedlm.kernels import cuda_w4a16, cuda_w8a8

    t0 = time.perf_counter()
    built = cuda_w4a16.available(torch.device("cuda")), cuda_w8a8.available(torch.device("cuda"))
    print(f"CUDA C++ libraries (w4a16, w8a8) available: {built} in {time.perf_counter() - t0:.1f} s", flush=True)
    results = []
    for threads in args.threads.split(","):
        with tempfile.TemporaryDirectory() as triton_cache:
            env = {**os.environ, "PAGEDLM_COMPILE_THREADS": threads, "TRITON_CACHE_DIR": triton_cache,
                   "PAGEDLM_TUNING_CACHE": "0"}
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"threads {threads}: FAILED (rc {proc.returncode})\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        result["process_s"] = round(wall, 1)
        results.append(result)
        print(f"threads {threads}: int4 {sum(result['int4_s'].values()):.1f} s {result['int4_s']}, "
              f"fp8 {sum(result['fp8_s'].values()):.1f} s {result['fp8_s']}, process {wall:.1f} s", flush=True)
    if len(results) > 1:
        same = all(r["int4_choices"] == results[0]["int4_choices"] for r in results)
        print("int4 choices " + ("identical across settings" if same else "differ (timing noise):"))
        if not same:
            for r in results:
                print(f"  threads {r['threads']}: {r['int4_choices']}")


if __name__ == "__main__":
    main()
