"""The CUDA 4-bit decode GEMV (``pagedlm/kernels/csrc/w4a16_gemv.cu``) per Llama-3.1-8B layer
(4-bit, group 128, bf16) at M = 1 (and 2, 4), over its rows-per-thread x split-K grid, against
the Triton kinds the load-time tuner picks today (the paired gemv at M = 1, the Triton mma kind at
M = 2-8), each timed as 32 launches over distinct weight copies in one CUDA graph with a small
PDL kernel between them (a decode step's pattern); every config checked against the float32
reference first. Then one whole layer (four GEMMs) at M = 1 with the best of each.

    PYTHONPATH=. python3 benchmarks/gpu_w4a16_cuda.py [--m 1 2 4 8]
"""
import argparse
import time

import torch

from pagedlm.kernels import cuda_build, cuda_w4a16, pdl, triton_wna16, wna16_reference
from pagedlm.kernels.tickets import ticket_counters
from pagedlm.kernels.triton_wna16 import KernelConfig as KC

ap = argparse.ArgumentParser()
ap.add_argument("--m", type=int, nargs="+", default=[1, 2, 4, 8])
ap.add_argument("--copies", type=int, default=32)
args = ap.parse_args()

dev = torch.device("cuda")
dt = torch.bfloat16
G = 128
L = args.copies
t0 = time.time()
assert cuda_w4a16.available(dev, "gemv") and cuda_w4a16.available(dev, "mma"), "kernels not built"
print(f"built/loaded {cuda_build.library_path('w4a16_mma', dev)} in {time.time() - t0:.1f} s", flush=True)
counters = ticket_counters(dev, "wna16")
shapes = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
pair_cfg = {"qkv": KC("gemv", 1, 256, 16, 4, 1, dequant="pair"), "o": KC("gemv", 1, 256, 16, 4, 1, dequant="pair"),
            "gate_up": KC("gemv", 1, 256, 5, 4, 1, dequant="pair"), "down": KC("gemv", 1, 256, 28, 4, 1, dequant="pair")}
mma_cfg = {"qkv": KC("mma", 8, 64, 11, 4, 1, 2), "o": KC("mma", 8, 64, 9, 4, 1, 2),
           "gate_up": KC("mma", 8, 64, 2, 4, 1, 1), "down": KC("mma", 8, 64, 17, 4, 1, 2)}
torch.manual_seed(0)


def make(k, n):
    q = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device=dev)
    s = (torch.rand(k // G, n, device=dev) * 0.01 + 0.001).to(dt)
    z = torch.randint(0, 16, (k // G, n), device=dev).to(dt)
    return q, s, z


def launch(x, q, s, z, gs, cfg, b=None):
    if cfg[0] == "gemv":
        return cuda_w4a16.gemv(x, q, s, z, gs, cfg[1], cfg[2], counters, b)
    return cuda_w4a16.mma(x, q, s, z, gs, cfg[1], cfg[2], cfg[3], counters, b)


# --- correctness first: odd shapes, bias, every rows/split, M = 1..4 ---
bad = []
for k, n, gs in ((4096, 6144, 128), (1280, 200, 128), (768, 132, 256), (14336, 4096, 128)):
    q, s, z = make(k, n) if gs == G else (torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device=dev),
                                           (torch.rand(k // gs, n, device=dev) * 0.01).to(dt),
                                           torch.randint(0, 16, (k // gs, n), device=dev).to(dt))
    qi = wna16_reference.pack_internal(wna16_reference.unpack_codes(q, 4), 4, gs)  # random codes, internal layout
    bias = torch.randn(n, device=dev, dtype=dt)
    for m in (1, 2, 3, 4, 5, 8):
        x = torch.randn(m, k, device=dev, dtype=dt) * 3
        for b in (None, bias):
            ref = wna16_reference.wna16_gemm(x.float(), qi, s.float(), z.float(), None, None, gs, 4,
                                             None if b is None else b.float())
            for cfg in [("gemv", r) for r in cuda_w4a16.ROWS] + [("mma", w, u) for w in cuda_w4a16.MMA_WARPS
                                                                  for u in cuda_w4a16.MMA_UNROLL]:
                for split in (1, 3, 64):
                    try:
                        out = launch(x, qi, s, z, gs, (*cfg, split), b).float()
                    except ValueError:  # smem too small for a long slice: fine
                        continue
                    except RuntimeError as e:
                        bad.append((k, n, gs, m, b is not None, cfg, split, str(e)[-60:]))
                        continue
                    err = ((out - ref).norm() / ref.norm()).item()
                    if not err < 1e-2:
                        bad.append((k, n, gs, m, b is not None, cfg, split, err))
torch.cuda.synchronize()
print("correctness:", "OK" if not bad else f"BAD {bad[:8]}", flush=True)
assert counters.abs().sum().item() == 0, "ticket counters not reset"

W = {name: [make(*shapes[name]) for _ in range(L)] for name in shapes}
tiny = torch.empty(4096, device=dev, dtype=dt)


def time_graph(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    st.record()
    for _ in range(reps):
        g.replay()
    en.record()
    torch.cuda.synchronize()
    return st.elapsed_time(en) / reps


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
    return time_graph(fn) / L * 1e3


def check(name, cfg, x):
    q, s, z = W[name][0]
    ref = wna16_reference.wna16_gemm(x.float(), q, s.float(), z.float(), None, None, G, 4)
    return ((run(name, cfg, x).float() - ref).norm() / ref.norm()).item()


best = {}
for m in args.m:
    for name, (k, n) in shapes.items():
        x = torch.randn(m, k, device=dev, dtype=dt)
        rows = []
        base = pair_cfg[name] if m == 1 else mma_cfg[name]
        rows.append((chain(name, base, x), "triton " + ("pair" if m == 1 else "mma"), check(name, base, x), base))
        grid = []
        if m <= cuda_w4a16.MAX_M and 1 in args.m and m == 1:
            for r in cuda_w4a16.ROWS:
                chunks = -(-(k // 128) // r)
                grid += [(("gemv", r, sp), f"cuda gemv r{r} s{cuda_w4a16.split_plan(k, r, sp)[0]}")
                         for sp in sorted({1, 2, 4, 8, 16, 32, chunks} & set(range(1, chunks + 1)))]
        for w in cuda_w4a16.MMA_WARPS:
            for u in cuda_w4a16.MMA_UNROLL:
                grid += [(("mma", w, u, sp), f"cuda mma w{w} u{u} s{sp}")
                         for sp in sorted({1, 2, 4, 8, 16, 32, k // 128} & set(range(1, k // 128 + 1)))]
        for cfg, lbl in grid:
            try:
                err = check(name, cfg, x)
                rows.append((chain(name, cfg, x), lbl, err, cfg))
            except ValueError:
                pass
        rows.sort(key=lambda t: t[0])
        errs = [r[2] for r in rows]
        floor = ((k // 8) * n * 4 + 2 * 2 * (k // G) * n) / 4.24e12 * 1e6
        print(f"M={m} {name:8s} floor {floor:5.1f}us  " + "  ".join(f"{lbl}:{t:.1f}" for t, lbl, _, _ in rows[:7]),
              f" | {[r for r in rows if r[1].startswith('triton')][0][0]:.1f} triton; max err {max(errs):.1e}",
              flush=True)
        best[m, name] = rows[0]
        best[m, name, "triton"] = [r for r in rows if r[1].startswith("triton")][0]
        best[m, name, "cuda"] = [r for r in rows if r[1].startswith("cuda")][0]

for m in args.m:
    xs = {name: torch.randn(m, shapes[name][0], device=dev, dtype=dt) for name in shapes}
    floor = sum(((k // 8) * n * 4 + 2 * 2 * (k // G) * n) for k, n in shapes.values()) / 4.24e12 * 1e6
    for label in ("triton", "cuda"):
        cfgs = {name: best[m, name, label][3] for name in shapes}

        def layer():
            for l in range(L):
                for name in shapes:
                    pdl.zero_(tiny)
                    run(name, cfgs[name], xs[name], l)
        per = time_graph(layer) / L * 1e3
        print(f"RESULT M={m} {label}: {per:.1f} us per layer (floor {floor:.1f}, {floor / per:.0%}) "
              + " ".join(f"{nm}={best[m, nm, label][1]}" for nm in shapes), flush=True)
