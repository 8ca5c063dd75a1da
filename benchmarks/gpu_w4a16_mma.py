"""W4A16 decode GEMMs per Llama-3.1-8B layer (4-bit, group 128, bf16) at M = 1 and 8: the mma kind
(``int4_mma``) over a grid of warps / unroll / split-K, against the kernels the load-time tuner
picked before it existed (M = 1: the paired gemv; M = 8: the wide_t / dot_t tiles), each timed
as 32 launches over distinct weight copies in one CUDA graph with a small PDL kernel between
them (a decode step's pattern: nothing in L2, the next launch overlapping the last's tail); every
config checked against the float32 reference. Then one whole layer (four GEMMs) at M = 1 with the
paired gemv only and with the best of each layer.

    PYTHONPATH=. python3 benchmarks/gpu_w4a16_mma.py
"""
import torch, triton, itertools
from pagedlm.kernels import triton_wna16, wna16_reference, pdl
from pagedlm.kernels.triton_wna16 import KernelConfig as KC, auto_split_k
dev = "cuda"; dt = torch.bfloat16; G = 128; L = 32; SMS = 132
shapes = {"qkv": (4096, 6144), "o": (4096, 4096), "gate_up": (4096, 28672), "down": (14336, 4096)}
pair_cfg = {"qkv": KC("gemv", 1, 256, 16, 4, 1, dequant="pair"), "o": KC("gemv", 1, 256, 16, 4, 1, dequant="pair"),
            "gate_up": KC("gemv", 1, 256, 5, 4, 1, dequant="pair"), "down": KC("gemv", 1, 256, 28, 4, 1, dequant="pair")}
torch.manual_seed(0)
def make(k, n):
    q = torch.randint(-2**31, 2**31 - 1, (k // 8, n), dtype=torch.int32, device=dev)
    s = (torch.rand(k // G, n, device=dev) * 0.01 + 0.001).to(dt); z = torch.randint(0, 16, (k // G, n), device=dev).to(dt)
    return q, s, z
W = {name: [make(*shapes[name]) for _ in range(L)] for name in shapes}
tiny = torch.empty(4096, device=dev, dtype=dt)
def time_graph(fn, reps=20):
    fn(); torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay(); torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    st.record()
    for _ in range(reps):
        g.replay()
    en.record(); torch.cuda.synchronize()
    return st.elapsed_time(en) / reps
def chain(name, cfg, x):
    def fn():
        for l in range(L):
            pdl.zero_(tiny)
            q, s, z = W[name][l]
            triton_wna16.wna16_gemm_with_config(x, q, s, z, None, G, 4, cfg)
    return time_graph(fn) / L * 1e3
def check(name, cfg, x):
    q, s, z = W[name][0]
    ref = wna16_reference.wna16_gemm(x.float(), q, s.float(), z.float(), None, None, G, 4)
    out = triton_wna16.wna16_gemm_with_config(x, q, s, z, None, G, 4, cfg).float()
    return ((out - ref).norm() / ref.norm()).item()
best = {}
for m in (1, 8):
    for name, (k, n) in shapes.items():
        x = torch.randn(m, k, device=dev, dtype=dt)
        k_tiles = k // 128
        rows = []
        if m == 1:
            rows.append((chain(name, pair_cfg[name], x), "pair " + str(pair_cfg[name].split_k), check(name, pair_cfg[name], x)))
        else:
            base = {"qkv": KC("wide_t", 16, 128, 6, 8, 2, 2), "o": KC("wide_t", 16, 128, 9, 8, 2, 2),
                    "gate_up": KC("dot_t", 16, 128, 2, 4, 3), "down": KC("wide_t", 16, 128, 14, 8, 2, 2)}[name]
            rows.append((chain(name, base, x), "tuned " + base.kind, check(name, base, x)))
        for w, u, waves in itertools.product((4, 8), (1, 2), (2.0, 4.0, 8.0)):
            split = auto_split_k(triton.cdiv(n, 16 * w), k_tiles, SMS, waves, min_tiles=u)
            cfg = KC("mma", 8, 16 * w, split, w, 1, u)
            try:
                err = check(name, cfg, x)
                rows.append((chain(name, cfg, x), f"mma w{w} u{u} s{split}", err))
            except Exception as e:  # noqa: BLE001
                print("FAIL", name, cfg, type(e).__name__, str(e)[:200], flush=True)
        rows.sort()
        bad = [r for r in rows if r[2] > 2e-2]
        floor = ((k // 8) * n * 4 + 2 * 2 * (k // G) * n) / 4.24e12 * 1e6
        print(f"M={m} {name:8s} floor {floor:5.1f}us  " + "  ".join(f"{lbl}:{t:.1f}" for t, lbl, _ in rows[:6]),
              f" max err {max(r[2] for r in rows):.1e}" + (f" BAD {bad}" if bad else ""), flush=True)
        best[m, name] = rows[0]
        if m == 1:
            best[m, name, "pair"] = [r for r in rows if r[1].startswith("pair")][0]
for m in (1,):
    for label in ("pair", "best"):
        cfgs = {}
        for name in shapes:
            lbl = best[m, name, "pair"][1] if label == "pair" else best[m, name][1]
            if lbl.startswith("pair"):
                cfgs[name] = pair_cfg[name]
            else:
                w, u, sp = (int(p[1:]) for p in lbl.split()[1:])
                cfgs[name] = KC("mma", 8, 16 * w, sp, w, 1, u)
        xs = {name: torch.randn(m, shapes[name][0], device=dev, dtype=dt) for name in shapes}
        def layer():
            for l in range(L):
                for name in shapes:
                    pdl.zero_(tiny)
                    q, s, z = W[name][l]
                    triton_wna16.wna16_gemm_with_config(xs[name], q, s, z, None, G, 4, cfgs[name])
        per = time_graph(layer) / L * 1e3
        floor = sum(((k // 8) * n * 4 + 2 * 2 * (k // G) * n) for k, n in shapes.values()) / 4.24e12 * 1e6
        print(f"RESULT M={m} {label}: {per:.1f} us per layer (floor {floor:.1f}, {floor / per:.0%}) "
              + " ".join(f"{k}={v}" for k, v in cfgs.items()), flush=True)
