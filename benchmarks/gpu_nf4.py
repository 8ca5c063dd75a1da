"""bitsandbytes 4-bit (NF4, blocks of 64) at one row, per Llama-3.1-8B layer: the one-row GEMV's
tiles (a sweep beyond the tuner's candidates), the tiled GEMM's, and dequantize + GEMM, each
checked against the float32 product, timed as the engine's tuner times them (CUDA graph, L2
flushed), against the layer's bytes at the card's copy rate. Also the dequantization kernel
alone. Floors: the bytes read at the copy rate (read + write bytes per second of a device
copy), as BENCHMARKS.md's weight floors. Run on a GPU from the repo root:

    PYTHONPATH=. python3 benchmarks/gpu_nf4.py [--quick]
"""

from __future__ import annotations

import argparse
import itertools

import torch
from torch.nn import functional as F

from pagedlm.kernels import bnb_linear, triton_nf4
from pagedlm.kernels.timing import decode_time_ms
from pagedlm.layers.quantization.bitsandbytes import TABLES, byte_table, dequantize_4bit

LAYERS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}


def copy_rate() -> float:
    """Read + write bytes per second of a 1 GiB device copy."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    return 2 * a.numel() * 10 / (start.elapsed_time(end) / 1e3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="only the tuner's candidates")
    args = p.parse_args()
    torch.manual_seed(0)
    rate = copy_rate()
    print(f"copy {rate / 1e12:.2f} TB/s")
    if args.quick:
        sweep = list(triton_nf4.GEMV_CONFIGS)
    else:
        sweep = [triton_nf4.Nf4GemvConfig(bn, bk, w, s)
                 for bn, bk, w, s in itertools.product((1, 2, 4, 8, 16), (512, 1024, 2048), (2, 4, 8), (1, 2, 3))
                 if 8 <= bn * bk // 2 // (32 * w) <= 64]  # 16-128 weights a thread per K tile
    table_vals = torch.tensor(TABLES["nf4"], device="cuda")
    pairs = byte_table(table_vals)
    table = pairs[:16, 1]
    total_best = total_tuner = total_floor = total_baseline = 0.0
    for name, (n, k) in LAYERS.items():
        packed = torch.randint(0, 256, (n, k // 2), device="cuda", dtype=torch.int32).to(torch.uint8)
        absmax = torch.rand(n, k // 64, device="cuda") * 0.05 + 0.01
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        expect = F.linear(x.float(), dequantize_4bit(packed, absmax, pairs, torch.float32))
        floor_us = (packed.numel() + absmax.numel() * 4) / rate * 1e6  # its bytes at the copy rate
        results = []
        for config in sweep:
            if not triton_nf4.gemv_fits(1, k, config):
                continue
            try:
                out = triton_nf4.nf4_gemv(x, packed, absmax, table, None, config)
            except Exception as e:  # noqa: BLE001 - a config the card cannot run is no candidate
                print(f"  {name} {config}: {type(e).__name__}")
                continue
            err = ((out.float() - expect).norm() / expect.norm()).item()
            if err > 1e-2:
                print(f"ERR {name} {config}: rel err {err:.2e}")
                continue
            us = decode_time_ms(lambda c=config: triton_nf4.nf4_gemv(x, packed, absmax, table, None, c),
                                x.device) * 1e3
            results.append((us, config))
        results.sort(key=lambda r: r[0])
        tuner_us = min(us for us, c in results if c in triton_nf4.GEMV_CONFIGS)
        baseline_us = decode_time_ms(lambda: F.linear(x, bnb_linear.dequantize(packed, absmax, table, x.dtype)),
                                     x.device) * 1e3
        deq_us = decode_time_ms(lambda: triton_nf4.nf4_dequantize(packed, absmax, table, torch.bfloat16),
                                x.device) * 1e3
        deq_bytes = packed.numel() + absmax.numel() * 4 + n * k * 2
        print(f"{name:8s} N={n} K={k}: floor {floor_us:.1f} us | best GEMV {results[0][0]:.1f} us "
              f"({floor_us / results[0][0]:.0%}) {results[0][1]} | tuner's candidates {tuner_us:.1f} | "
              f"dequantize + GEMM {baseline_us:.1f} (dequantize alone {deq_us:.1f} us, "
              f"{deq_bytes / deq_us / 1e6:.2f} TB/s)")
        for us, config in results[1:4]:
            print(f"           {us:.1f} us {config}")
        total_best += results[0][0]
        total_tuner += tuner_us
        total_floor += floor_us
        total_baseline += baseline_us
    print(f"LAYER nf4 one row: floor {total_floor:.1f} us, best GEMVs {total_best:.1f} "
          f"({total_floor / total_best:.0%}), tuner's candidates {total_tuner:.1f}, dequantize + GEMM "
          f"{total_baseline:.1f}")


if __name__ == "__main__":
    main()
