"""Decode GEMV at the Llama-3.1-8B linear shapes (bf16, M = 1-8): the Triton split-K GEMV
vs cuBLAS (F.linear) vs the copy floor (weight bytes / measured copy bandwidth).

Checks every config against F.linear first (PASS/FAIL per shape), then times cuBLAS and the
best GEMV config, and prints each as a fraction of copy bandwidth. One H200 call:
  python benchmarks/gpu_gemv.py [--quick] [--output-json gemv.json]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from benchmarks.floors import measure_floors
from pagedlm.kernels.triton_gemv import candidate_configs, gemv, quick_configs

HIDDEN, INTER, VOCAB, Q, KV = 4096, 14336, 128256, 4096, 1024
SHAPES = {"qkv_proj": (Q + 2 * KV, HIDDEN), "o_proj": (HIDDEN, Q), "gate_up_proj": (2 * INTER, HIDDEN),
          "down_proj": (HIDDEN, INTER), "lm_head": (VOCAB, HIDDEN)}


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=50, return_mode="median")


def best_gemv(x: torch.Tensor, w: torch.Tensor, configs) -> tuple[object, float, bool]:
    """-> (best config, its ms, every config agreed with F.linear)."""
    ref = F.linear(x, w).float()
    best, best_ms, all_ok = None, float("inf"), True
    for config in configs:
        try:
            out = gemv(x, w, None, config)
        except Exception as e:  # noqa: BLE001 - e.g. out of shared memory: skip that config
            print(f"  config {config} failed to run: {type(e).__name__}")
            continue
        err = ((out.float() - ref).norm() / ref.norm()).item()
        if err > 1e-2:
            all_ok = False
            print(f"  FAIL config {config}: relative error {err:.3g}")
            continue
        ms = bench(lambda c=config: gemv(x, w, None, c))
        if ms < best_ms:
            best, best_ms = config, ms
    return best, best_ms, all_ok


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="the few configs the engine's first-use tuner tries")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    floors = measure_floors()
    bw = floors["copy_bytes_per_s"]
    print(f"{floors['card']}: copy {bw / 1e12:.2f} TB/s")
    configs = quick_configs() if args.quick else candidate_configs()
    rows, failed = [], False
    print(f"{'layer':<13} {'M':>2} {'floor us':>9} {'cuBLAS us':>10} {'%bw':>5} {'gemv us':>8} {'%bw':>5}  best config")
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        for m in args.batch_sizes:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            floor_ms = (n * k + m * k + m * n) * 2 / bw * 1e3
            cublas_ms = bench(lambda: F.linear(x, w))
            config, ms, ok = best_gemv(x, w, configs)
            failed |= not ok or config is None
            rows.append(dict(layer=name, m=m, n=n, k=k, floor_us=floor_ms * 1e3, cublas_us=cublas_ms * 1e3,
                             gemv_us=ms * 1e3, config=repr(config), correct=ok))
            print(f"{name:<13} {m:>2} {floor_ms * 1e3:>9.1f} {cublas_ms * 1e3:>10.1f} {floor_ms / cublas_ms:>5.0%} "
                  f"{ms * 1e3:>8.1f} {floor_ms / ms:>5.0%}  {config}")
        del w
    total = {key: sum(r[key] for r in rows if r["m"] == 1) for key in ("floor_us", "cublas_us", "gemv_us")}
    print(f"M=1, all five layers once: floor {total['floor_us']:.0f} us, cuBLAS {total['cublas_us']:.0f} us, "
          f"GEMV {total['gemv_us']:.0f} us")
    print("FAIL: a GEMV config disagreed with F.linear" if failed else "PASS: every GEMV config agrees with F.linear")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"floors": floors, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
