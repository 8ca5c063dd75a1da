"""What bounds the W4A16 (AWQ / GPTQ int4) GEMMs on this card, at Llama-3.1-8B layer shapes.

Run on the GPU machine from the repo root:
    PYTHONPATH=. python3 benchmarks/gpu_w4a16_bounds.py [--section 1|2|3 ...]

1. Batch 1, the streaming ceiling: a kernel that only reads the packed int4 words in the
   GEMV's pattern (K tiles of 16 packed rows x BLOCK_N columns, split-K over a grid like the
   tuner's) and sums them, timed the way the tuner times the GEMV (CUDA-graph replay, L2
   flushed: ``kernels/timing.py``). With ``--work`` it adds C dependent float ops per word,
   ``--prefetch`` loads tile t + 1 while tile t is summed. Compare with
   ``gpu_w4a16.py --sweep pair --m 1``: how far the real GEMV is from a kernel that does no math.
2. Large M: dequantize the whole weight + cuBLAS (the engine's path for M >= 256 on the large
   layers) against dequantizing column chunks small enough to stay in L2 and multiplying each
   right after (the bf16 copy then never reaches HBM), and bf16 cuBLAS.
3. Batch 1 in another layout: the words stored output-major ([N, K / 8], each column's K
   contiguous, 8 consecutive inputs per word) and streamed the way the one-row chunked GEMV
   streams 8-bit weights (``triton_gemv_fused``, ``chunk``): each thread loads 16 bytes of one
   column, the paired-bf16 step (``int4_pairs``) turns each word into its 8 products, the
   thread sums its chunk, scales it once per group. The activation pairs are prepared once
   per call outside the timing (a producer kernel could emit them). Against the engine's
   layout, this says how much of the int4 batch-1 gap is the layout. ``--section 3`` alone.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from benchmarks.gpu_w4a16 import SHAPES_8B, make_layer, rel_err
from pagedlm.kernels import triton_wna16
from pagedlm.kernels.int4_pairs import pair_products
from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue
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


@triton.jit
def _column_major_gemv(xp_ptr, q_ptr, zz_ptr, s_ptr, out_ptr, N, words, stride_qn, stride_gn,
                       BLOCK_N: tl.constexpr, WORDS: tl.constexpr, R: tl.constexpr, GROUP_WORDS: tl.constexpr,
                       MATH: tl.constexpr, PDL: tl.constexpr = False):
    """y[n] = sum_k (code[n, k] - zero[n, g]) * scale[n, g] * x[k] for BLOCK_N columns, WORDS
    words of each column per iteration in chunks of R words (16 bytes) per thread. xp: the
    activation pairs [4, K / 8] (x[8w + i], x[8w + i + 4]) as packed bf16; zz: 128 + zero in
    both halves [N, groups]; MATH False: only read and sum the words (the ceiling)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rn_load = tl.minimum(rn, N - 1).to(tl.int64)
    woff = tl.arange(0, WORDS // R)[:, None] * R + tl.arange(0, R)[None, :]  # [KC, R]
    q_tiles = q_ptr + rn_load[:, None, None] * stride_qn + woff[None, :, :]
    pdl_prologue(PDL)  # as the engine's GEMVs launch (the timing's flush kernel is a PDL kernel too)
    acc = tl.zeros((BLOCK_N, WORDS // R), dtype=tl.float32)
    for w0 in range(0, words, WORDS):
        q = tl.load(q_tiles + w0)
        if MATH:
            g = (w0 + tl.arange(0, WORDS // R) * R) // GROUP_WORDS  # each chunk lies in one group
            zz = tl.load(zz_ptr + rn_load[:, None] * stride_gn + g[None, :])
            sc = tl.load(s_ptr + rn_load[:, None] * stride_gn + g[None, :]).to(tl.float32)
            xp0 = tl.broadcast_to(tl.load(xp_ptr + w0 + woff)[None, :, :], (BLOCK_N, WORDS // R, R))
            xp1 = tl.broadcast_to(tl.load(xp_ptr + words + w0 + woff)[None, :, :], (BLOCK_N, WORDS // R, R))
            xp2 = tl.broadcast_to(tl.load(xp_ptr + 2 * words + w0 + woff)[None, :, :], (BLOCK_N, WORDS // R, R))
            xp3 = tl.broadcast_to(tl.load(xp_ptr + 3 * words + w0 + woff)[None, :, :], (BLOCK_N, WORDS // R, R))
            prod = pair_products(q, xp0, xp1, xp2, xp3, tl.broadcast_to(zz[:, :, None], (BLOCK_N, WORDS // R, R)))
            acc += tl.sum(prod, axis=2) * sc
        else:
            acc += tl.sum(q.to(tl.float32), axis=2)
    tl.store(out_ptr + rn, tl.sum(acc, axis=1), mask=rn < N)


def _pack_pairs(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Two bf16 tensors as one int32 (lo in bits 0-15)."""
    return (lo.view(torch.int16).to(torch.int32) & 0xFFFF) | (hi.view(torch.int16).to(torch.int32) << 16)


def column_major(dev: torch.device, copy_bw: float) -> None:
    print("\n## batch 1, output-major words streamed in 16-byte chunks (µs per layer; % of the copy rate)")
    group = 128
    total = {}
    for name, (k, n) in SHAPES_8B.items():
        gen = torch.Generator(device=dev).manual_seed(k + n)
        q = torch.randint(-(2**31), 2**31 - 1, (n, k // 8), dtype=torch.int32, device=dev, generator=gen)
        zeros = torch.randint(0, 16, (n, k // group), device=dev, generator=gen)
        scales = (torch.rand(n, k // group, device=dev, generator=gen) * 0.5 + 0.5) * 0.006
        x = torch.randn(k, device=dev, generator=gen).to(torch.bfloat16)
        codes = (q[:, :, None] >> (4 * torch.arange(8, device=dev))) & 0xF  # [N, K/8, 8]: input 8w + j
        w = (codes.reshape(n, k).float() - zeros.float().repeat_interleave(group, 1)) * \
            scales.repeat_interleave(group, 1)
        ref = w @ x.float()
        del codes, w
        xw = x.view(k // 8, 8)
        xp = torch.stack([_pack_pairs(xw[:, i].contiguous(), xw[:, i + 4].contiguous()) for i in range(4)])
        z16 = (zeros + 128).to(torch.bfloat16)
        zz = _pack_pairs(z16, z16).contiguous()
        sc = scales.to(torch.bfloat16).contiguous()
        out = torch.empty(n, device=dev)
        floor_us = q.numel() * 4 / copy_bw * 1e6
        best = {}
        for bn, words, warps in ((2, 256, 2), (2, 512, 2), (4, 256, 2), (4, 512, 2), (8, 256, 2), (4, 256, 4),
                                 (4, 512, 4), (8, 512, 4), (2, 512, 4), (4, 128, 4)):
            if (k // 8) % words:
                continue  # the loop has no masks: each column's words must be whole iterations
            for math_ in (False, True):
                def run(bn=bn, words=words, warps=warps, math_=math_) -> None:
                    _column_major_gemv[(triton.cdiv(n, bn),)](xp, q, zz, sc, out, n, k // 8, q.stride(0),
                                                              zz.stride(0), bn, words, 4, group // 8, math_,
                                                              num_warps=warps, **launch_kwargs())
                run()
                if math_:
                    err = rel_err(out, ref)
                    assert err < 2e-2, (name, bn, words, err)
                us = decode_time_ms(run, dev) * 1e3
                label = "gemv" if math_ else "read"
                if label not in best or us < best[label][0]:
                    best[label] = (us, f"{bn} cols x {words} words w{warps}")
        for label, (us, cfg) in best.items():
            total[label] = total.get(label, 0.0) + us
            print(f"{name:8} {label}: {us:6.1f} µs ({100 * floor_us / us:3.0f}% of copy; floor {floor_us:.1f}) at {cfg}",
                  flush=True)
        total["floor"] = total.get("floor", 0.0) + floor_us
    print(f"one layer: read-only {total['read']:.1f} µs, GEMV {total['gemv']:.1f} µs, floor {total['floor']:.1f} µs")


def main() -> None:
    import argparse

    from benchmarks.floors import measure_floors

    p = argparse.ArgumentParser()
    p.add_argument("--section", type=int, choices=(1, 2, 3), action="append", help="run only these (default: all)")
    sections = p.parse_args().section or [1, 2, 3]
    floors = measure_floors()
    print(f"{floors['card']}: copy {floors['copy_bytes_per_s'] / 1e12:.2f} TB/s")
    dev = torch.device("cuda")
    if 1 in sections:
        stream_ceiling(dev, floors["copy_bytes_per_s"])
    if 2 in sections:
        large_m(dev)
    if 3 in sections:
        column_major(dev, floors["copy_bytes_per_s"])


if __name__ == "__main__":
    main()
