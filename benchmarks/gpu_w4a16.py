"""W4A16 (AWQ / GPTQ int4) GEMM: correctness, then speed at Llama-3.1-8B layer shapes.

Run on the GPU machine from the repo root:
    PYTHONPATH=. python3 benchmarks/gpu_w4a16.py [--json PATH] [--bits 4] [--group-size 128]

1. Correctness: for every shape and M in 1, 8, 64, 256, 1024 the Triton path (after the
   per-shape tuning the loader runs) against the float32 PyTorch reference; one PASS / FAIL
   line each, and every tile config of the sweep is checked too.
2. Speed (medians of triton.testing.do_bench, L2 flushed, microseconds): the chosen path, every
   candidate (split-K / tiled configs, dequantize + cuBLAS), bf16 cuBLAS on the same shape, and
   the floors: int4 bytes (packed weight + scales + zeros + x + y, once each) over the measured
   copy bandwidth, and 2*M*N*K over the measured bf16 matmul rate. "graph" is the chosen path
   replayed from a CUDA graph (no launch cost), which is what decode steps see.
3. A summary per M over the four layers of one decoder layer (qkv, o, gate_up, down): int4 /
   bf16 time (the issue's batch-1 target is <= 0.4 for the whole model) and % of the int4
   bytes floor.

--device cpu --small checks the script itself through Triton's interpreter (TRITON_INTERPRET=1
is set for you); its times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass

SHAPES_8B = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
SHAPES_SMALL = {"qkv": (256, 384), "down": (512, 256)}
M_VALUES = (1, 8, 64, 256, 1024)
TOL = 1e-2


@dataclass
class Row:
    layer: str
    m: int
    chosen: str
    int4_us: float
    graph_us: float | None
    bf16_us: float
    int4_floor_us: float
    flop_floor_us: float
    rel_err: float
    sweep: dict


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--small", action="store_true", help="tiny shapes (with --device cpu: the interpreter)")
    p.add_argument("--bits", type=int, default=4, choices=(4, 8))
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--json", default=None, help="write the rows here")
    return p.parse_args()


def make_layer(k: int, n: int, bits: int, group_size: int, device: str):
    import torch

    from pagedlm.kernels import wna16_reference

    g = torch.Generator().manual_seed(k * 31 + n)
    codes = torch.randint(0, 2**bits, (k, n), generator=g)
    groups = k // group_size
    scales = (torch.rand(groups, n, generator=g) * 0.5 + 0.5) * (0.05 / 2 ** (bits - 1))
    zeros = torch.randint(0, 2**bits, (groups, n), generator=g).float()
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    qweight = wna16_reference.pack_codes(codes, bits).to(device)
    return qweight, scales.to(device, dtype), zeros.to(device, dtype)


def bench_us(fn, device: str) -> float:
    if device != "cuda":
        fn()
        return float("nan")
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3


def graph_us(fn, device: str) -> float | None:
    """Per call from a CUDA graph of 20 calls (launch overhead excluded)."""
    if device != "cuda":
        return None
    import torch

    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(20):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / 100


def rel_err(out, ref) -> float:
    out, ref = out.float().cpu(), ref.float().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def measure_case(name: str, k: int, n: int, m: int, layer, args, floors: dict, failures: list) -> Row:
    import torch

    from pagedlm.kernels import triton_wna16, wna16_reference, wna16_tuning

    qweight, scales, zeros = layer
    gs, bits, dev = args.group_size, args.bits, args.device
    x = torch.randn(m, k, device=dev, dtype=scales.dtype)
    ref = wna16_reference.wna16_gemm(x.float(), qweight, scales.float(), zeros.float(), None, None, gs, bits)
    chosen = lambda: triton_wna16.wna16_gemm(x, qweight, scales, zeros, None, None, gs, bits)  # noqa: E731
    err = rel_err(chosen(), ref)
    ok = err < TOL
    print(f"{'PASS' if ok else 'FAIL'} correctness {name} M={m}: rel err {err:.2e}")
    if not ok:
        failures.append(f"{name} M={m}")
    sms = torch.cuda.get_device_properties(0).multi_processor_count if dev == "cuda" else 132
    candidates = wna16_tuning.small_m_candidates(n, k, sms) if m <= 16 else wna16_tuning.tiled_candidates(m)
    sweep = {}
    for cand in candidates:
        run = lambda c=cand: wna16_tuning.run_choice(c, x, qweight, scales, zeros, None, gs, bits)  # noqa: E731
        try:
            cerr = rel_err(run(), ref)
        except Exception as exc:  # noqa: BLE001 - a config the card cannot run is reported, not fatal
            sweep[wna16_tuning.describe(cand)] = f"error: {type(exc).__name__}"
            continue
        if cerr >= TOL:
            failures.append(f"{name} M={m} {wna16_tuning.describe(cand)}")
            print(f"FAIL correctness {name} M={m} {wna16_tuning.describe(cand)}: rel err {cerr:.2e}")
        sweep[wna16_tuning.describe(cand)] = round(bench_us(run, dev), 2)
    w_bf16 = wna16_reference.wna16_dequantize(qweight, scales, zeros, None, gs, bits).to(x.dtype)
    bf16_us = bench_us(lambda: x @ w_bf16, dev)
    pick = triton_wna16.pick_config(m, n, k, bits, gs, sms)
    weight_bytes = k * n * bits // 8 + 2 * scales.numel() * scales.element_size()
    act_bytes = (m * k + m * n) * x.element_size()
    bw, tflops = floors.get("copy_bytes_per_s", float("nan")), floors.get("bf16_tflops", float("nan"))
    return Row(name, m, wna16_tuning.describe(pick), bench_us(chosen, dev), graph_us(chosen, dev), bf16_us,
               (weight_bytes + act_bytes) / bw * 1e6, 2 * m * n * k / (tflops * 1e12) * 1e6, err, sweep)


def print_table(rows: list[Row]) -> None:
    print(f"\n{'layer':8} {'M':>5} {'chosen':>20} {'int4 us':>9} {'graph us':>9} {'bf16 us':>9} {'int4/bf16':>9} "
          f"{'bytes floor':>11} {'%floor':>7} {'flop floor':>10}")
    for r in rows:
        g = f"{r.graph_us:9.1f}" if r.graph_us is not None else f"{'-':>9}"
        print(f"{r.layer:8} {r.m:5d} {r.chosen:>20} {r.int4_us:9.1f} {g} {r.bf16_us:9.1f} "
              f"{r.int4_us / r.bf16_us:9.2f} {r.int4_floor_us:11.1f} {100 * r.int4_floor_us / r.int4_us:6.0f}% "
              f"{r.flop_floor_us:10.1f}")
    print("\nper decoder layer (qkv + o + gate_up + down):")
    for m in sorted({r.m for r in rows}):
        sel = [r for r in rows if r.m == m]
        int4, bf16, floor = (sum(getattr(r, f) for r in sel) for f in ("int4_us", "bf16_us", "int4_floor_us"))
        gr = [r.graph_us for r in sel if r.graph_us is not None]
        gtxt = f", graph {sum(gr):.1f} us ({sum(gr) / bf16:.2f} x bf16)" if len(gr) == len(sel) else ""
        print(f"  M={m:5d}: int4 {int4:8.1f} us, bf16 {bf16:8.1f} us, int4/bf16 {int4 / bf16:.2f}, "
              f"{100 * floor / int4:.0f}% of the int4 bytes floor{gtxt}")
    for r in rows:
        print(f"sweep {r.layer} M={r.m}: {r.sweep}")


def main() -> int:
    args = parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from pagedlm.kernels import wna16_tuning

    floors = {}
    if args.device == "cuda":
        from benchmarks.floors import measure_floors

        floors = measure_floors()
        print(f"{floors['card']}: copy {floors['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
              f"bf16 {floors['bf16_tflops']:.0f} TFLOP/s")
    shapes = SHAPES_SMALL if args.small else SHAPES_8B
    m_values = (1, 16, 64) if args.device == "cpu" else M_VALUES
    rows, failures = [], []
    for name, (k, n) in shapes.items():
        layer = make_layer(k, n, args.bits, args.group_size, args.device)
        wna16_tuning.tune(*layer[:3], None, args.group_size, args.bits)  # what the loader does (CUDA only)
        for m in m_values:
            rows.append(measure_case(name, k, n, m, layer, args, floors, failures))
        del layer
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print_table(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"floors": floors, "bits": args.bits, "group_size": args.group_size,
                       "rows": [asdict(r) for r in rows]}, f, indent=1)
    listed = f": {', '.join(failures[:10])}" if failures else ""
    print(f"\n{'PASS' if not failures else 'FAIL'}: w4a16 correctness ({len(failures)} failures{listed})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
