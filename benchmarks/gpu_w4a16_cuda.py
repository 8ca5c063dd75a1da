"""The CUDA W4A16 decode kernel (``pagedlm/kernels/csrc/w4a16_mma.cu``, the "cuda" kind) per
Llama-3.1-8B layer (4-bit, group 128, bf16) at M = 1, 2, 4, 8, over its warps x unroll x split-K
grid, against the Triton kinds the load-time tuner picked before it (the paired gemv at M = 1,
the Triton mma kind at M = 2-8), each timed as 32 launches over distinct weight copies in one
CUDA graph with a small PDL kernel between them (a decode step's pattern); every config checked
against the float32 reference first. Then one whole layer (four GEMMs) with the best of each.

    PYTHONPATH=. python3 benchmarks/gpu_w4a16_cuda.py [--m 1 8]
    PYTHONPATH=. python3 benchmarks/gpu_w4a16_cuda.py --variants ";NAME=VALUE"

``--variants`` compares builds of the kernel with different build-time knobs (``-D`` NAME=VALUE
sets, ``;``-separated, the empty set being the default build) over the tuner's cuda configs.
"""
import argparse
import time

import torch

from pagedlm.kernels.timing import graph_ms
from pagedlm.kernels import cuda_build, cuda_w4a16, pdl, triton_wna16, wna16_reference
from pagedlm.kernels.tickets import ticket_counters
from pagedlm.kernels.triton_wna16 import KernelConfig as KC
from pagedlm.kernels.wna16_tuning import _CUDA_SHAPES

ap = argparse.ArgumentParser()
ap.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8])
ap.add_argument("--copies", type=int, default=32)
ap.add_argument("--variants", default=None)
args = ap.parse_args()

dev = torch.device("cuda")
dt = torch.bfloat16
G = 128
L = args.copies
t0 = time.time()
assert cuda_w4a16.available(dev), "kernel not built"
print(f"built/loaded {cuda_build.library_path(cuda_w4a16.NAME, dev)} in {time.time() - t0:.1f} s", flush=True)
counters = ticket_counters(dev, "wna16")
shapes = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
pair_cfg = {"qkv": KC("gemv", 1, 256, 16, 4, 1, dequant="pair"), "o": KC("gemv", 1, 256, 16, 4, 1, dequant="pair"),
            "gate_up": KC("gemv", 1, 256, 5, 4, 1, dequant="pair"), "down": KC("gemv", 1, 256, 28, 4, 1, dequant="pair")}
mma_cfg = {"qkv": KC("mma", 8, 64, 11, 4, 1, 2), "o": KC("mma", 8, 64, 9, 4, 1, 2),
           "gate_up": KC("mma", 8, 64, 2, 4, 1, 1), "down": KC("mma", 8, 64, 17, 4, 1, 2)}
torch.manual_seed(0)


def make(k, n, gs=G):
    q = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device=dev)  # any words: random codes
    s = (torch.rand(k // gs, n, device=dev) * 0.01 + 0.001).to(dt)
    z = torch.randint(0, 16, (k // gs, n), device=dev).to(dt)
    return q, s, z


def launch(x, q, s, z, gs, cfg, b=None):
    return cuda_w4a16.mma(x, q, s, z, gs, cfg[0], cfg[1], cfg[2], counters, b)


def correctness():
    bad = []
    for k, n, gs in ((4096, 6144, 128), (1280, 200, 128), (768, 132, 256), (14336, 4096, 128)):
        q, s, z = make(k, n, gs)
        bias = torch.randn(n, device=dev, dtype=dt)
        for m in (1, 3, 8):
            x = torch.randn(m, k, device=dev, dtype=dt) * 3
            for b in (None, bias):
                ref = wna16_reference.wna16_gemm(x.float(), q, s.float(), z.float(), None, None, gs, 4,
                                                 None if b is None else b.float())
                for w in cuda_w4a16.WARPS:
                    for u in cuda_w4a16.UNROLL:
                        for split in (1, 3, 64):
                            err = ((launch(x, q, s, z, gs, (w, u, split), b).float() - ref).norm() / ref.norm()).item()
                            if not err < 1e-2:
                                bad.append((k, n, gs, m, b is not None, w, u, split, err))
    torch.cuda.synchronize()
    assert counters.abs().sum().item() == 0, "ticket counters not reset"
    return bad


W = {name: [make(*shapes[name]) for _ in range(L)] for name in shapes}
tiny = torch.empty(4096, device=dev, dtype=dt)


def run(name, cfg, x, l=0):
    q, s, z = W[name][l]
    if isinstance(cfg, tuple):
        return launch(x, q, s, z, G, cfg)
    return triton_wna16.wna16_gemm_with_config(x, q, s, z, None, G, 4, cfg)


def chain(name, cfg, x):
    def fn():
        for l in range(L):
            pdl.zero_(tiny)
            run(name, cfg, x, l)
    return graph_ms(fn) / L * 1e3


def check(name, cfg, x):
    q, s, z = W[name][0]
    ref = wna16_reference.wna16_gemm(x.float(), q, s.float(), z.float(), None, None, G, 4)
    return ((run(name, cfg, x).float() - ref).norm() / ref.norm()).item()


def floor_us(k, n):
    return ((k // 8) * n * 4 + 2 * 2 * (k // G) * n) / 4.24e12 * 1e6


def full_comparison():
    best = {}
    for m in args.m:
        for name, (k, n) in shapes.items():
            x = torch.randn(m, k, device=dev, dtype=dt)
            base = pair_cfg[name] if m == 1 else mma_cfg[name]
            rows = [(chain(name, base, x), "triton " + ("pair" if m == 1 else "mma"), check(name, base, x), base)]
            for w in cuda_w4a16.WARPS:
                for u in cuda_w4a16.UNROLL:
                    for sp in sorted({1, 2, 4, 8, 16, 32, k // 128}):
                        err = check(name, (w, u, sp), x)
                        rows.append((chain(name, (w, u, sp), x), f"cuda w{w} u{u} s{sp}", err, (w, u, sp)))
            rows.sort(key=lambda t: t[0])
            print(f"M={m} {name:8s} floor {floor_us(k, n):5.1f}us  "
                  + "  ".join(f"{lbl}:{t:.1f}" for t, lbl, _, _ in rows[:6]),
                  f" | triton {[r for r in rows if r[1].startswith('triton')][0][0]:.1f}; "
                  f"max err {max(r[2] for r in rows):.1e}", flush=True)
            for label in ("triton", "cuda"):
                best[m, name, label] = [r for r in rows if r[1].startswith(label)][0]
    floor = sum(floor_us(k, n) for k, n in shapes.values())
    for m in args.m:
        xs = {name: torch.randn(m, shapes[name][0], device=dev, dtype=dt) for name in shapes}
        for label in ("triton", "cuda"):
            def layer():
                for l in range(L):
                    for name in shapes:
                        pdl.zero_(tiny)
                        run(name, best[m, name, label][3], xs[name], l)
            per = graph_ms(layer) / L * 1e3
            print(f"RESULT M={m} {label}: {per:.1f} us per layer (floor {floor:.1f}, {floor / per:.0%}) "
                  + " ".join(f"{nm}={best[m, nm, label][1]}" for nm in shapes), flush=True)


def variants_table():
    floor = sum(floor_us(k, n) for k, n in shapes.values())
    for variant in args.variants.split(";"):
        defines = tuple(d for d in variant.split(",") if d)
        cuda_w4a16.use_build(dev, defines)
        bad = correctness()
        print(f"VARIANT [{variant or 'default'}] correctness:", "OK" if not bad else f"BAD {bad[:8]}", flush=True)
        for m in args.m:
            xs = {name: torch.randn(m, shapes[name][0], device=dev, dtype=dt) for name in shapes}
            total, picks = 0.0, []
            for name in shapes:
                timed = []
                for w, u, sp in _CUDA_SHAPES:
                    assert check(name, (w, u, sp), xs[name]) < 1e-2, (variant, name, w, u, sp)
                    timed.append((chain(name, (w, u, sp), xs[name]), f"w{w}u{u}s{sp}"))
                t, lbl = min(timed)
                total += t
                picks.append(f"{name}={t:.1f}({lbl})")
            print(f"VARIANT [{variant or 'default'}] M={m}: {total:.1f} us per layer ({floor / total:.0%} of floor)  "
                  + " ".join(picks), flush=True)


if args.variants is None:
    bad = correctness()
    print("correctness:", "OK" if not bad else f"BAD {bad[:8]}", flush=True)
    full_comparison()
else:
    variants_table()
