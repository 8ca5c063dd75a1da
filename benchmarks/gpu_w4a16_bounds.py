"""What bounds the W4A16 (AWQ / GPTQ int4) GEMMs on this card, at Llama-3.1-8B layer shapes.

Run on the GPU machine from the repo root:
    PYTHONPATH=. python3 benchmarks/gpu_w4a16_bounds.py

1. Batch 1, the streaming ceiling: a kernel that only reads the packed int4 words in the
   GEMV's pattern (K tiles of 16 packed rows x BLOCK_N columns, split-K over a grid like the
   tuner's) and sums them, timed the way the tuner times the GEMV (CUDA-graph replay, L2
   flushed: ``kernels/timing.py``). With ``--work`` it adds C dependent float ops per word,
   ``--prefetch`` loads tile t + 1 while tile t is summed. Compare with
   ``gpu_w4a16.py --sweep pair --m 1``: how far the real GEMV is from a kernel that does no math.
2. Large M: dequantize the whole weight + cuBLAS (the engine's path for M >= 256 on the large
   layers) against dequantizing column chunks small enough to stay in L2 and multiplying each
   right after (the bf16 copy then never reaches HBM), and bf16 cuBLAS.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from benchmarks.gpu_w4a16 import SHAPES_8B, make_layer, rel_err
from pagedlm.kernels import triton_wna16
from pagedlm.kernels.timing import decode_time_ms

R = 16  # packed rows per K tile (group 128, 4-bit)


@triton.jit
def _stream_kernel(q_ptr, out_ptr, N, tiles_per_split, k_tiles, R: tl.constexpr, BLOCK_N: tl.constexpr,
                   WORK: tl.constexpr, PREFETCH: tl.constexpr):
    pid_n, pid_k = tl.program_id(0), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R)
    kt0 = pid_k * tiles_per_split
    kt1 = tl.minimum(kt0 + tiles_per_split, k_tiles)
    acc = tl.zeros((R, BLOCK_N), dtype=tl.float32)
    if PREFETCH:
        q = tl.load(q_ptr + (kt0 * R + offs_r)[:, None].to(tl.int64) * N + offs_n[None, :])
    for kt in range(kt0, kt1):
        if PREFETCH:
            nxt = tl.load(q_ptr + ((kt + 1) * R + offs_r)[:, None].to(tl.int64) * N + offs_n[None, :],
                          mask=(offs_r * 0 + kt + 1 < kt1)[:, None], other=0)
        else:
            q = tl.load(q_ptr + (kt * R + offs_r)[:, None].to(tl.int64) * N + offs_n[None, :])
        if WORK == 0:
            acc += q.to(tl.float32)
        for j in tl.static_range(WORK):
            acc = acc * 0.999 + ((q >> (j % 8)) & 0x000F000F | 0x43004300).to(tl.float32, bitcast=True)
        if PREFETCH:
            q = nxt
    tl.store(out_ptr + pid_k * N + offs_n, tl.sum(acc, 0))


def _stream_us(q: torch.Tensor, out: torch.Tensor, k_tiles: int, block_n: int, warps: int, tiles_per_split: int,
               work: int, prefetch: bool) -> float:
    n = q.shape[1]

    def run() -> None:
        _stream_kernel[(triton.cdiv(n, block_n), 1, out.shape[0])](q, out, n, tiles_per_split, k_tiles, R, block_n,
                                                                   work, prefetch, num_warps=warps)

    run()
    return decode_time_ms(run, q.device) * 1e3


def stream_ceiling(dev: torch.device, copy_bw: float) -> None:
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print("\n## batch 1: reading the packed words in the GEMV's pattern, no math (µs; % of the copy rate)")
    print(f"{'layer':8} {'tile':>12} {'split':>5} {'work':>4} {'prefetch':>8} {'us':>7} {'%copy':>6}")
    for name, (k, n) in SHAPES_8B.items():
        q = torch.randint(-(2**31), 2**31 - 1, (k // 8, n), dtype=torch.int32, device=dev)
        k_tiles = k // 8 // R
        floor_us = q.numel() * 4 / copy_bw * 1e6
        best = None
        for bn, warps in ((128, 2), (256, 4), (512, 8)):
            for waves in (2.0, 4.0, 8.0):
                split = triton_wna16.auto_split_k(triton.cdiv(n, bn), k_tiles, sms, waves)
                tps = triton.cdiv(k_tiles, split)
                split = triton.cdiv(k_tiles, tps)
                out = torch.empty(split, n, device=dev)
                for work in (0, 16):
                    for pf in (False, True):
                        us = _stream_us(q, out, k_tiles, bn, warps, tps, work, pf)
                        if work == 0 and (best is None or us < best[0]):
                            best = (us, bn, warps, split, pf)
                        print(f"{name:8} {f'{bn} cols w{warps}':>12} {split:5d} {work:4d} {pf!s:>8} {us:7.1f} "
                              f"{100 * floor_us / us:5.0f}%", flush=True)
        us, bn, warps, split, pf = best
        print(f"{name:8} best read-only: {us:.1f} µs ({100 * floor_us / us:.0f}% of copy; floor {floor_us:.1f} µs) "
              f"at {bn} cols w{warps} split {split} prefetch {pf!s}")
        del q


def large_m(dev: torch.device) -> None:
    print("\n## large M: µs per GEMM (dequantize + cuBLAS on the whole weight vs on column chunks)")
    for name, (k, n) in SHAPES_8B.items():
        layer = make_layer(k, n, 4, 128, "cuda")
        for m in (256, 1024):
            res = _large_m_case(torch.randn(m, k, device=dev, dtype=torch.bfloat16), *layer)
            print(f"{name:8} M={m:5d}: " + ", ".join(f"{label} {us:.1f}" for label, us in res.items()), flush=True)


def _large_m_case(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> dict:
    dev, k, n = x.device, x.shape[1], qweight.shape[1]
    w = triton_wna16.wna16_dequantize(qweight, scales, zeros, None, 128, 4)
    ref = x @ w
    res = {"bf16 cuBLAS": decode_time_ms(lambda: x @ w, dev) * 1e3,
           "dequant + cuBLAS": decode_time_ms(
               lambda: x @ triton_wna16.wna16_dequantize(qweight, scales, zeros, None, 128, 4), dev) * 1e3}
    for mib in (16, 32):
        cols = max(256, (mib << 20) // (2 * k) // 256 * 256)
        if cols >= n:
            continue
        parts = [(a, min(n, a + cols), qweight[:, a:a + cols].contiguous(), scales[:, a:a + cols].contiguous(),
                  zeros[:, a:a + cols].contiguous()) for a in range(0, n, cols)]
        out = torch.empty(x.shape[0], n, device=dev, dtype=torch.bfloat16)

        def chunked(parts=parts, out=out) -> torch.Tensor:
            for a, b, q_, s_, z_ in parts:
                torch.mm(x, triton_wna16.wna16_dequantize(q_, s_, z_, None, 128, 4), out=out[:, a:b])
            return out

        err = rel_err(chunked(), ref)
        assert err < 1e-3, (k, n, cols, err)
        res[f"{cols}-column chunks ({mib} MiB bf16)"] = decode_time_ms(chunked, dev) * 1e3
    return res


def main() -> None:
    from benchmarks.floors import measure_floors

    floors = measure_floors()
    print(f"{floors['card']}: copy {floors['copy_bytes_per_s'] / 1e12:.2f} TB/s")
    dev = torch.device("cuda")
    stream_ceiling(dev, floors["copy_bytes_per_s"])
    large_m(dev)


if __name__ == "__main__":
    main()
