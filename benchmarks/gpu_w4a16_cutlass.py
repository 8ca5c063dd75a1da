"""The CUTLASS W4A16 GEMM (``pagedlm/kernels/cutlass_w4a16.py``) against bf16 cuBLAS and the
engine's large-M path (dequantize + cuBLAS) per Llama-3.1-8B layer, M = 16 .. 16,384.

Run on the GPU machine from the repo root, with the nvidia-cutlass package importable
(the first run builds every tile's library, about two minutes in parallel):
    PYTHONPATH=. python3 benchmarks/gpu_w4a16_cutlass.py [--m 64,256,1024] [--tiles 128x128c,64x128p]

Every tile is checked against the float32 product of the dequantized weight (relative error
< 1e-2, else an ERR line) and timed as the loader's tuners time (``decode_time_ms``: replayed
from a CUDA graph, L2 flushed before every call). Printed per layer and M: bf16, dequantize +
cuBLAS, the best tile; then per decoder layer (the four summed) each as a multiple of bf16.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from benchmarks.gpu_w4a16 import SHAPES_8B, make_layer
from pagedlm.kernels import cutlass_w4a16, wna16_reference, wna16_tuning
from pagedlm.kernels.timing import decode_time_ms

BITS, GROUP = 4, 128
M_VALUES = (16, 32, 64, 128, 256, 512, 1024, 2048, 16384)


def tile_name(tile: tuple[int, int, int]) -> str:
    return f"{tile[0]}x{tile[1]}{'p' if tile[2] else 'c'}"


def time_tiles(name: str, m: int, x: torch.Tensor, ref: torch.Tensor, ops: tuple, built: list,
               dev: torch.device) -> tuple[list, int]:
    """(graph-timed µs, tile, relative error) of every tile that agrees with ``ref``; failures."""
    timed, failures = [], 0
    for tile in built:
        run = lambda t=tile: cutlass_w4a16.gemm(x, *ops, GROUP, t)  # noqa: E731
        try:
            err = wna16_tuning.relative_error(run(), ref)
        except RuntimeError as exc:
            print(f"ERR {name} M={m} {tile_name(tile)}: {exc}")
            failures += 1
            continue
        if not err < 1e-2:
            print(f"ERR {name} M={m} {tile_name(tile)}: relative error {err:.2e}")
            failures += 1
            continue
        timed.append((decode_time_ms(run, dev) * 1e3, tile, err))
    return timed, failures


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--m", default=",".join(map(str, M_VALUES)))
    p.add_argument("--tiles", default="", help="comma-separated names such as 128x128c (default: all)")
    p.add_argument("--layers", default="")
    args = p.parse_args()
    dev = torch.device("cuda")
    tiles = cutlass_w4a16.TILES
    if args.tiles:
        tiles = tuple(t for t in tiles if tile_name(t) in args.tiles.split(","))
    t0 = time.perf_counter()
    built = cutlass_w4a16.built_tiles(dev, tiles)
    print(f"built {len(built)}/{len(tiles)} tiles in {time.perf_counter() - t0:.0f} s: "
          f"{', '.join(map(tile_name, built))}", flush=True)
    if not built:
        raise SystemExit("the CUTLASS kernel is not available here")
    shapes = {k: v for k, v in SHAPES_8B.items() if not args.layers or k in args.layers.split(",")}
    m_values = [int(v) for v in args.m.split(",")]
    per_layer: dict[int, dict[str, float]] = {m: {"bf16": 0.0, "deq": 0.0, "cutlass": 0.0} for m in m_values}
    failures = 0
    print(f"{'layer':<8} {'M':>6} {'bf16 us':>9} {'deq+cuBLAS':>10} {'cutlass':>9} {'best tile':<10} "
          f"{'x bf16':>6} {'x deq':>6}  other tiles (us)")
    for name, (k, n) in shapes.items():
        qweight, scales, zeros = make_layer(k, n, BITS, GROUP, "cuda")
        w_kn = wna16_reference.wna16_dequantize(qweight, scales, zeros, None, GROUP, BITS).to(torch.bfloat16)
        w_nk = w_kn.t().contiguous()
        ops = cutlass_w4a16.prepare(qweight, scales, zeros, GROUP, BITS)
        for m in m_values:
            x = (torch.randn(m, k, device=dev) * 0.5).to(torch.bfloat16)
            bf16 = decode_time_ms(lambda: F.linear(x, w_nk), dev) * 1e3
            deq = decode_time_ms(lambda: wna16_tuning.run_choice(None, x, qweight, scales, zeros, None, GROUP, BITS),
                                 dev) * 1e3
            timed, failed = time_tiles(name, m, x, x.float() @ w_kn.float(), ops, built, dev)
            failures += failed
            if not timed:
                continue
            best_us, best_tile, best_err = min(timed)
            for key, us in (("bf16", bf16), ("deq", deq), ("cutlass", best_us)):
                per_layer[m][key] += us
            others = " ".join(f"{tile_name(t)}:{us:.1f}" for us, t, _ in sorted(timed)[1:4])
            print(f"{name:<8} {m:>6} {bf16:>9.1f} {deq:>10.1f} {best_us:>9.1f} {tile_name(best_tile):<10} "
                  f"{best_us / bf16:>6.2f} {best_us / deq:>6.2f}  err {best_err:.1e}; {others}", flush=True)
    print("\nper decoder layer (qkv + o + gate_up + down), us")
    print(f"{'M':>6} {'bf16':>9} {'deq+cuBLAS':>10} {'x bf16':>6} {'cutlass':>9} {'x bf16':>6}")
    for m, row in per_layer.items():
        if row["bf16"]:
            print(f"{m:>6} {row['bf16']:>9.1f} {row['deq']:>10.1f} {row['deq'] / row['bf16']:>6.2f} "
                  f"{row['cutlass']:>9.1f} {row['cutlass'] / row['bf16']:>6.2f}")
    if failures:
        raise SystemExit(f"{failures} tile runs failed")

if __name__ == "__main__":
    main()
