"""W4A16 (AWQ / GPTQ int4) GEMM: correctness, then speed at Llama-3.1-8B layer shapes.

Run on the GPU machine from the repo root (about 5 minutes; --sweep quick: about 2):
    PYTHONPATH=. python3 benchmarks/gpu_w4a16.py [--json PATH] [--bits 4] [--group-size 128]
        [--sweep full|quick] [--layers qkv,o,gate_up,down] [--m 1,8,64,256,1024]

1. Correctness: for every shape and M the Triton path (after the per-shape tuning the loader
   runs) against the float32 PyTorch reference, one PASS / FAIL line each; every config of
   the sweep is checked too (a FAIL names it).
2. Speed (medians of triton.testing.do_bench, L2 flushed, microseconds): the chosen path,
   every config of the sweep (the load-time candidates, then block sizes, warps, stages,
   split-K, unroll and the dequant form of each kernel kind: gemv / dot / dot_t, see
   pagedlm/kernels/triton_wna16.py), bf16 cuBLAS on the same shape, and the floors: int4
   bytes (packed weight + scales + zeros + x + y, once each) over the measured copy
   bandwidth, and 2*M*N*K over the measured bf16 matmul rate. "graph" is the chosen path
   replayed from a CUDA graph with L2 flushed before each call (no launch cost, the weight
   from HBM), which is what decode steps see.
3. A summary per M over the four layers of one decoder layer (qkv, o, gate_up, down): int4 /
   bf16 for the chosen path and for the best config of the sweep (the issue's batch-1 target
   is <= 0.4 for the whole model, throughput >= 1.0), and % of the int4 bytes floor. The top
   three configs of each case are printed so the load-time candidate list can be narrowed.

--device cpu --small checks the script itself through Triton's interpreter (TRITON_INTERPRET=1
is set for you); its times mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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
    best: str
    best_us: float
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
    p.add_argument("--sweep", default="full", choices=("full", "quick", "pair", "wide"),
                   help="quick: only the load-time candidates; pair: those and a grid of the paired gemv (M=1); "
                        "wide: those and a grid of the wide-K tensor-core kinds (wide / wide_t)")
    p.add_argument("--timing", default="graph", choices=("graph", "eager"),
                   help="how the sweep and bf16 are timed: replayed from a CUDA graph with L2 flushed (what a "
                        "decode step sees), or one eager call (do_bench: includes the host's launch)")
    p.add_argument("--layers", default=None, help="comma-separated subset of qkv,o,gate_up,down")
    p.add_argument("--m", default=None, help="comma-separated M values (default 1,8,64,256,1024)")
    p.add_argument("--json", default=None, help="write the rows here")
    return p.parse_args()


def make_layer(k: int, n: int, bits: int, group_size: int, device: str):
    """Random packed words (every field is a valid code, whatever the layout), sane scales."""
    import torch

    g = torch.Generator().manual_seed(k * 31 + n)
    qweight = torch.randint(-(2**31), 2**31 - 1, (k * bits // 32, n), generator=g, dtype=torch.int64)
    groups = k // group_size
    scales = (torch.rand(groups, n, generator=g) * 0.5 + 0.5) * (0.05 / 2 ** (bits - 1))
    zeros = torch.randint(0, 2**bits, (groups, n), generator=g).float()
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    return qweight.to(torch.int32).to(device), scales.to(device, dtype), zeros.to(device, dtype)


def sweep_configs(m: int, n: int, k: int, bits: int, gs: int, sms: int, level: str) -> list:
    """The load-time candidates, then (pair, full) a grid of the paired GEMV at M = 1 and
    (full) a grid around them for each kernel kind."""
    from pagedlm.kernels import triton_wna16, wna16_tuning

    def mk(kind, bm, bn, warps, stages, waves, unroll=1, dequant=""):
        return wna16_tuning.make_config(kind, bm, bn, m, n, k, bits, gs, sms, warps, stages, waves, unroll, dequant)

    out = list(wna16_tuning.candidates(m, n, k, bits, gs, sms))
    if level == "quick":
        return out
    if m == 1:
        out += [mk("gemv", 1, bn, w, s, waves, 1, "pair") for bn in (256, 512) for w in (4, 8) for s in (1, 3)
                for waves in (2.0, 4.0, 8.0)]
        out += [mk("gemv", 1, 256, 4, 4, 4.0, 2, "pair"), mk("gemv", 1, 512, 4, 1, 4.0, 2, "pair")]
    if level == "full":
        out += _full_grid(m, mk)
    if level == "wide":
        out += _wide_grid(m, mk)
    seen = dict.fromkeys(c for c in out if c is None or _fits_registers(c))
    return [c for c in seen if c is None or triton_wna16.config_fits(c, k, gs, bits)]


def _full_grid(m: int, mk) -> list:
    """The float32 GEMV (M = 1) and tensor-core tiles around the load-time candidates."""
    out = []
    if m == 1:
        out += [mk("gemv", 1, bn, w, 3, waves, u) for bn in (64, 128, 256, 512) for w in (4, 8) for u in (1, 2)
                for waves in (1.0, 2.0, 4.0, 8.0)]
        out += [mk("gemv", 1, 128, 4, p, 4.0) for p in (1, 2, 4)] + [mk("gemv", 1, 128, 4, 3, 4.0, 1, "int")]
    if m <= 16:
        out += [mk(kind, 16, bn, 4, 3, waves) for kind in ("dot_t", "dot") for bn in (64, 128)
                for waves in (1.0, 2.0, 4.0)]
        out += [mk("dot_t", 16, 64, 4, p, 2.0) for p in (2, 4)] + [mk("dot_t", 16, 128, 8, 3, 2.0)]
        out += [mk(kind, 16, 64, 4, 3, 2.0, 1, d) for kind in ("dot_t", "dot") for d in ("f32", "int")]
    else:
        big = max(32, 1 << max(0, m - 1).bit_length())
        out += [mk("dot", bm, bn, w, 3, 1.0) for bm in (32, 64, 128) for bn in (64, 128, 256) for w in (4, 8)
                if bm <= big]
        out += [mk("dot_t", bm, bn, w, 3, 1.0) for bn in (64, 128) for bm in (32, 64, 128, 256) for w in (4, 8)
                if bm <= big]
        out += [mk(kind, 64, 128, 4, p, 1.0) for kind in ("dot", "dot_t") for p in (2, 4)]
        out += [mk(kind, 64, 128, 4, 3, 2.0) for kind in ("dot", "dot_t")]
        out += [mk(kind, 64, 128, 4, 3, 1.0, 1, d) for kind in ("dot", "dot_t") for d in ("f32", "int")]
    return out


def _wide_grid(m: int, mk) -> list:
    """The wide-K tensor-core kinds (one MMA step per packed K tile, or two: unroll)."""
    if m <= 16:
        return ([mk("wide_t", 16, bn, w, p, waves, u) for bn in (64, 128, 256) for w in (4, 8) for p in (2, 3, 4)
                 for u in (1, 2) for waves in (1.0, 2.0)]
                + [mk("wide", 16, bn, 4, p, 2.0, u) for bn in (64, 128) for p in (3, 4) for u in (1, 2)])
    big = max(32, 1 << max(0, m - 1).bit_length())
    out = [mk("wide", bm, bn, w, p, 1.0, u) for bm in (64, 128, 256) for bn in (64, 128, 256) for w in (4, 8)
           for p in (3, 4) for u in (1, 2) if bm <= big]
    out += [mk("wide_t", bm, bn, w, 3, 1.0, u) for bn in (64, 128, 256) for bm in (32, 64, 128) for w in (4, 8)
            for u in (1, 2) if bm <= big]
    return out


def _fits_registers(c) -> bool:
    """Leave out configs that spill or overflow shared memory on sm_90 (compiled offline: a
    float32 accumulator over 128 registers a thread, or a float32 gemv tile of more than 512
    words a K step per 4 warps; the paired form ran 1024-word steps on 4 warps, session 14)."""
    if c.kind == "gemv" and c.dequant != "pair":
        return c.block_n * c.unroll <= 128 * c.num_warps and c.block_n * c.unroll <= 512
    return c.block_m * c.block_n <= 128 * 32 * c.num_warps


def bench_us(fn, device: str) -> float:
    if device != "cuda":
        fn()
        return float("nan")
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=25, return_mode="median") * 1e3


def graph_us(fn, device: str) -> float | None:
    """Per call replayed from a CUDA graph, L2 flushed before each call (no launch cost; the
    weight comes from HBM, as in a decode step): what the loader's tuner measures."""
    if device != "cuda":
        return None
    import torch

    from pagedlm.kernels.timing import decode_time_ms

    fn()
    return decode_time_ms(fn, torch.device("cuda")) * 1e3


def time_us(fn, args) -> float:
    """The sweep's timing (--timing)."""
    if args.timing == "graph" and args.device == "cuda":
        return graph_us(fn, args.device)
    return bench_us(fn, args.device)


def rel_err(out, ref) -> float:
    out, ref = out.float(), ref.float()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def run_sweep(name: str, m: int, x, layer, ref, args, sms: int, failures: list) -> dict:
    from pagedlm.kernels import wna16_tuning

    qweight, scales, zeros = layer
    k, n = x.shape[1], qweight.shape[1]
    sweep: dict = {}
    for cand in sweep_configs(m, n, k, args.bits, args.group_size, sms, args.sweep):
        label = wna16_tuning.describe(cand)
        run = lambda c=cand: wna16_tuning.run_choice(c, x, qweight, scales, zeros, None,  # noqa: E731
                                                     args.group_size, args.bits)
        try:
            cerr = rel_err(run(), ref)
        except Exception as exc:  # noqa: BLE001 - a config the card cannot run is reported, not fatal
            sweep[label] = f"error: {type(exc).__name__}: {str(exc)[:80]}"
            continue
        if not cerr < TOL:
            failures.append(f"{name} M={m} {label}")
            print(f"FAIL correctness {name} M={m} {label}: rel err {cerr:.2e}", flush=True)
            continue
        sweep[label] = round(time_us(run, args), 2)
    return sweep


def measure_case(name: str, k: int, n: int, m: int, layer, args, floors: dict, failures: list) -> Row:
    import torch

    from pagedlm.kernels import triton_wna16, wna16_reference, wna16_tuning

    qweight, scales, zeros = layer
    gs, bits, dev = args.group_size, args.bits, args.device
    x = torch.randn(m, k, device=dev, dtype=scales.dtype)
    w_ref = wna16_reference.wna16_dequantize(qweight, scales.float(), zeros.float(), None, gs, bits)
    ref = x.float() @ w_ref
    del w_ref
    chosen = lambda: triton_wna16.wna16_gemm(x, qweight, scales, zeros, None, None, gs, bits)  # noqa: E731
    err = rel_err(chosen(), ref)
    ok = err < TOL
    print(f"{'PASS' if ok else 'FAIL'} correctness {name} M={m}: rel err {err:.2e}", flush=True)
    if not ok:
        failures.append(f"{name} M={m}")
    sms = torch.cuda.get_device_properties(0).multi_processor_count if dev == "cuda" else 132
    sweep = run_sweep(name, m, x, layer, ref, args, sms, failures)
    w_bf16 = wna16_reference.wna16_dequantize(qweight, scales, zeros, None, gs, bits).to(x.dtype)
    bf16_us = time_us(lambda w=w_bf16: x @ w, args)
    w_bf16 = None  # free the dense copy before the next case
    pick = triton_wna16.pick_config(m, n, k, bits, gs, sms)
    timed = {label: us for label, us in sweep.items() if isinstance(us, float)}
    best = min(timed, key=timed.get) if timed else "-"
    weight_bytes = k * n * bits // 8 + 2 * scales.numel() * scales.element_size()
    act_bytes = (m * k + m * n) * x.element_size()
    bw, tflops = floors.get("copy_bytes_per_s", float("nan")), floors.get("bf16_tflops", float("nan"))
    row = Row(name, m, wna16_tuning.describe(pick), bench_us(chosen, dev), graph_us(chosen, dev), best,
              timed.get(best, float("nan")), bf16_us, (weight_bytes + act_bytes) / bw * 1e6,
              2 * m * n * k / (tflops * 1e12) * 1e6, err, sweep)
    print(f"  {name} M={m}: chosen {row.chosen} {row.int4_us:.1f} us, best {best} {row.best_us:.1f} us, "
          f"bf16 {bf16_us:.1f} us", flush=True)
    return row


def print_table(rows: list[Row]) -> None:
    for r in rows:
        timed = sorted((us, label) for label, us in r.sweep.items() if isinstance(us, float))
        errors = sum(1 for us in r.sweep.values() if not isinstance(us, float))
        top = ", ".join(f"{label} {us:.1f}" for us, label in timed[:3])
        print(f"top {r.layer} M={r.m}: {top}" + (f" ({errors} configs errored)" if errors else ""))
    print(f"\n{'layer':8} {'M':>5} {'chosen':>26} {'us':>7} {'graph':>7} {'best of sweep':>26} {'us':>7} "
          f"{'bf16':>7} {'ch/bf16':>7} {'best/bf16':>9} {'floor':>6} {'%floor':>6}")
    for r in rows:
        g = f"{r.graph_us:7.1f}" if r.graph_us is not None else f"{'-':>7}"
        print(f"{r.layer:8} {r.m:5d} {r.chosen:>26} {r.int4_us:7.1f} {g} {r.best:>26} {r.best_us:7.1f} "
              f"{r.bf16_us:7.1f} {r.int4_us / r.bf16_us:7.2f} {r.best_us / r.bf16_us:9.2f} {r.int4_floor_us:6.1f} "
              f"{100 * r.int4_floor_us / min(r.int4_us, r.best_us):5.0f}%")
    print("\nper decoder layer (qkv + o + gate_up + down):")
    for m in sorted({r.m for r in rows}):
        sel = [r for r in rows if r.m == m]
        int4, best, bf16, floor = (sum(getattr(r, f) for r in sel) for f in ("int4_us", "best_us", "bf16_us",
                                                                             "int4_floor_us"))
        gr = [r.graph_us for r in sel if r.graph_us is not None]
        gtxt = f", graph {sum(gr):.1f} us ({sum(gr) / bf16:.2f} x bf16)" if len(gr) == len(sel) else ""
        print(f"  M={m:5d}: int4 chosen {int4:7.1f} us ({int4 / bf16:.2f} x bf16), best-of-sweep {best:7.1f} us "
              f"({best / bf16:.2f} x), bf16 {bf16:7.1f} us, {100 * floor / int4:.0f}% of the int4 bytes floor{gtxt}")


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
              f"bf16 {floors['bf16_tflops']:.0f} TFLOP/s", flush=True)
    shapes = SHAPES_SMALL if args.small else SHAPES_8B
    if args.layers:
        shapes = {name: shapes[name] for name in args.layers.split(",")}
    m_values = [int(v) for v in args.m.split(",")] if args.m else (1, 16, 64) if args.device == "cpu" else M_VALUES
    rows, failures = [], []
    for name, (k, n) in shapes.items():
        layer = make_layer(k, n, args.bits, args.group_size, args.device)
        t0 = time.perf_counter()
        wna16_tuning.tune(*layer[:3], None, args.group_size, args.bits)  # what the loader does (CUDA only)
        print(f"{name}: load-time tuning {time.perf_counter() - t0:.1f} s", flush=True)
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
