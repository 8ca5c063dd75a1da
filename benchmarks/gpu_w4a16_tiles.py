"""W4A16 tensor-core tiles at batched-decode sizes: the wide kinds against the dot kinds,
dequantize + cuBLAS and bf16 cuBLAS (Llama-3.1-8B layers, 4-bit, group 128).

Run on the GPU machine from the repo root (about 2 minutes, most of it compiling):
    PYTHONPATH=. python3 benchmarks/gpu_w4a16_tiles.py [--swapped-tiles]

--swapped-tiles adds wide_t tiles of 64-256 rows (``SWAPPED_TILES``). In them the dequantized
weight is the tensor-core step's register operand and the compiled loop leaves one step in
flight while the next tile is dequantized (wgmma wait 1 in the sm_90 PTX), where the wide kind
stores the weight to shared memory and waits for each step (wait 0): the candidates for
large M, where dequantize + cuBLAS still wins.

For M = 16, 32, 64, 128, 256 and each layer (qkv, gate_up, down, o): every config of a
fixed grid (``GRID``: the load-time candidates of ``wna16_tuning`` and a few more), each
checked against the float32 product of the dequantized weight (relative error < 1e-2, else
an ERR line) and timed as the loader's tuner times (``decode_time_ms``: replayed from a CUDA
graph, L2 flushed before every call), beside dequantize + cuBLAS and bf16 cuBLAS. Printed per
case: bf16, dequantize + cuBLAS, the best dot-kind config, the three best configs; then per
decoder layer (the four summed): "before" = the best of the dot kinds and dequantize +
cuBLAS (what the tuner chose among before the wide kinds), the best of the grid, each as a
multiple of bf16.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.gpu_w4a16 import SHAPES_8B, make_layer
from pagedlm.kernels import wna16_reference, wna16_tuning
from pagedlm.kernels.timing import decode_time_ms

BITS, GROUP = 4, 128
M_VALUES = (16, 32, 64, 128, 256)
# (kind, block_m, block_n, num_warps, num_stages, unroll); split-K as the tuner sets it
GRID = (("wide_t", 16, 128, 8, 3, 2), ("wide_t", 16, 128, 8, 2, 2), ("wide_t", 16, 64, 4, 3, 2),
        ("dot_t", 16, 128, 4, 3, 1), ("wide", 32, 128, 4, 4, 2), ("wide", 64, 256, 8, 4, 2),
        ("wide", 64, 128, 4, 4, 2), ("dot", 64, 128, 4, 3, 1), ("wide", 128, 256, 8, 3, 1),
        ("wide", 128, 128, 8, 3, 1), ("wide", 128, 128, 8, 3, 2), ("wide", 256, 128, 8, 3, 1))
SWAPPED_TILES = (("wide_t", 128, 128, 8, 3, 1), ("wide_t", 256, 128, 8, 3, 1), ("wide_t", 128, 64, 4, 3, 1),
                 ("wide_t", 256, 64, 8, 3, 1), ("wide_t", 64, 128, 4, 4, 2))
BASELINES = ("bf16", "deq+cuBLAS")


def time_case(name: str, m: int, x, layer, w_bf16, dev, sms: int, grid: tuple) -> dict:
    qweight, scales, zeros = layer
    k, n = x.shape[1], qweight.shape[1]
    ref = x.float() @ w_bf16.float()
    res = {"bf16": decode_time_ms(lambda: x @ w_bf16, dev) * 1e3,
           "deq+cuBLAS": decode_time_ms(lambda: wna16_tuning.run_choice(None, x, qweight, scales, zeros, None,
                                                                        GROUP, BITS), dev) * 1e3}
    for kind, bm, bn, warps, stages, unroll in grid:
        cfg = wna16_tuning.make_config(kind, bm, bn, m, n, k, BITS, GROUP, sms, warps, stages,
                                       2.0 if bm == 16 else 1.0, unroll)
        run = lambda c=cfg: wna16_tuning.run_choice(c, x, qweight, scales, zeros, None, GROUP, BITS)  # noqa: E731
        try:
            out = run()
            err = ((out.float() - ref).norm() / ref.norm()).item()
            if not err < 1e-2:
                raise AssertionError(f"relative error {err:.2e}")
            res[wna16_tuning.describe(cfg)] = decode_time_ms(run, dev) * 1e3
        except Exception as exc:  # noqa: BLE001 - reported, the case goes on
            print(f"ERR {name} M={m} {wna16_tuning.describe(cfg)}: {type(exc).__name__}: {str(exc)[:100]}",
                  flush=True)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--swapped-tiles", action="store_true", help="add SWAPPED_TILES to the grid")
    grid = GRID + (SWAPPED_TILES if parser.parse_args().swapped_tiles else ())
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for name in ("qkv", "gate_up", "down", "o"):
        k, n = SHAPES_8B[name]
        layer = make_layer(k, n, BITS, GROUP, "cuda")
        w_bf16 = wna16_reference.wna16_dequantize(*layer, None, GROUP, BITS).to(torch.bfloat16)
        for m in M_VALUES:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            res = time_case(name, m, x, layer, w_bf16, dev, sms, grid)
            best = sorted((us, label) for label, us in res.items() if label not in BASELINES)[:3]
            dot = min(us for label, us in res.items() if label.startswith("dot"))
            print(f"{name:8} M={m:4} bf16 {res['bf16']:7.1f} deq {res['deq+cuBLAS']:7.1f} dot {dot:7.1f} | "
                  + ", ".join(f"{label} {us:.1f}" for us, label in best), flush=True)
            rows.append((m, res))
    print("\nper decoder layer (qkv + gate_up + down + o), us:")
    for m in M_VALUES:
        sel = [res for mm, res in rows if mm == m]
        bf16 = sum(r["bf16"] for r in sel)
        before = sum(min(us for label, us in r.items() if label.startswith("dot") or label == "deq+cuBLAS")
                     for r in sel)
        best = sum(min(us for label, us in r.items() if label != "bf16") for r in sel)
        print(f"M={m}: bf16 {bf16:.1f} | before (dot kinds, deq+cuBLAS) {before:.1f} ({before / bf16:.2f}x) | "
              f"best of the grid and deq+cuBLAS {best:.1f} ({best / bf16:.2f}x)")


if __name__ == "__main__":
    main()
