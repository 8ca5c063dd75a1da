"""Would a decode step gain from running attention beside the GEMMs (NanoFlow's idea)?

At 1,000 running requests a Llama-3.1-8B decode step is about half GEMM (compute-bound) and
half paged attention (bandwidth-bound), each near its own ceiling, one after the other. This
script times a stack of decoder layers' GEMMs + attention (norms, RoPE and the KV write left
out: a few percent of the step) at batch B in CUDA graphs, four ways:

  serial       one batch, one stream: what the engine does today
  split        two half batches, one stream: the cost of halving M
  overlap      two half batches, two streams: attention of one half runs while the other
               half's o/gate_up/down/next-qkv GEMMs run (software-pipelined across layers)
  overlap+cN   the same with cuBLAS told to leave N SMs free (torch's SM carveout)

Output of the overlapped schedules is checked against serial. Run on the GPU machine:
    PAGEDLM_PDL=0 PYTHONPATH=. python3 benchmarks/gpu_overlap.py [--batch 1024] [--layers 8]
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from pagedlm.kernels.timing import replay_ms
from pagedlm.kernels.triton_activation import silu_and_mul
from pagedlm.kernels.triton_attention import default_config, paged_attention_with_config

HQ, HKV, D, HIDDEN, INTER, BS = 32, 8, 128, 4096, 14336, 16


class Layers:
    def __init__(self, num_layers: int, batch: int, ctx_lo: int, ctx_hi: int, gen: torch.Generator) -> None:
        dev, dt = "cuda", torch.bfloat16
        s, sd = 0.5 / math.sqrt(HIDDEN), 0.5 / math.sqrt(INTER)  # activations stay O(1) through the stack
        self.w = [dict(qkv=torch.randn(HIDDEN + 2 * HKV * D, HIDDEN, device=dev, dtype=dt) * s,
                       o=torch.randn(HIDDEN, HIDDEN, device=dev, dtype=dt) * s,
                       gu=torch.randn(2 * INTER, HIDDEN, device=dev, dtype=dt) * s,
                       down=torch.randn(HIDDEN, INTER, device=dev, dtype=dt) * sd) for _ in range(num_layers)]
        self.seq_lens = torch.randint(ctx_lo, ctx_hi + 1, (batch,), generator=gen).int().cuda()
        blocks = [math.ceil(n / BS) for n in self.seq_lens.tolist()]
        total = sum(blocks)
        self.tables = torch.zeros(batch, max(blocks), dtype=torch.int32, device=dev)
        perm = torch.randperm(total, device=dev).int()
        used = 0
        for b, n in enumerate(blocks):
            self.tables[b, :n] = perm[used: used + n]
            used += n
        # One cache per layer, as the engine holds them.
        self.kv = [torch.randn(2, total, BS, HKV, D, device=dev, dtype=dt) for _ in range(num_layers)]
        self.max_seq = int(self.seq_lens.max())
        self.batch = batch

    def halves(self, parts: int) -> list[slice]:
        step = self.batch // parts
        return [slice(i * step, (i + 1) * step if i < parts - 1 else self.batch) for i in range(parts)]


class Part:
    """One nano-batch: its rows' buffers and attention metadata."""

    def __init__(self, layers: Layers, rows: slice, x0: torch.Tensor) -> None:
        n = rows.stop - rows.start
        self.x = x0[rows].clone()
        self.h = torch.randn(n, HIDDEN + 2 * HKV * D, device="cuda", dtype=x0.dtype)  # qkv (attn-only runs)
        self.qsl = torch.arange(n + 1, dtype=torch.int32, device="cuda")
        self.seq_lens = layers.seq_lens[rows].contiguous()
        self.tables = layers.tables[rows].contiguous()
        self.config = default_config(n, HQ, HKV, D, 1, layers.max_seq, self.x.device, num_tokens=n)
        self.n = n

    def qkv(self, w):
        self.h = F.linear(self.x, w["qkv"])

    def attn(self, kv, max_seq):
        q = self.h[:, :HIDDEN].view(self.n, HQ, D)
        self.a = paged_attention_with_config(q, kv, self.qsl, self.seq_lens, self.tables, 1, max_seq, D ** -0.5,
                                             None, self.config)

    def mlp(self, w):
        o = F.linear(self.a.reshape(self.n, HIDDEN), w["o"]) + self.x
        self.x = F.linear(silu_and_mul(F.linear(o, w["gu"])), w["down"]) + o


def serial(layers: Layers, parts: list[Part], only: str = "") -> None:
    """only="gemm" / "attn": that half of the work alone (the bound a perfect overlap meets)."""
    for li, w in enumerate(layers.w):
        for p in parts:
            if only != "attn":
                p.qkv(w)
            if only != "gemm":
                p.attn(layers.kv[li], layers.max_seq)
            else:
                p.a = p.h[:, :HIDDEN]
            if only != "attn":
                p.mlp(w)


def overlap(layers: Layers, parts: list[Part], side: torch.cuda.Stream) -> None:
    main = torch.cuda.current_stream()
    n = len(layers.w)

    def launch_attn(p: Part, li: int) -> torch.cuda.Event:
        ready = torch.cuda.Event()
        ready.record(main)
        side.wait_event(ready)
        with torch.cuda.stream(side):
            p.attn(layers.kv[li], layers.max_seq)
        done = torch.cuda.Event()
        done.record(side)
        return done

    done = []
    for p in parts:
        p.qkv(layers.w[0])
        done.append(launch_attn(p, 0))
    for li in range(n):
        for k, p in enumerate(parts):
            main.wait_event(done[k])
            p.mlp(layers.w[li])
            if li + 1 < n:
                p.qkv(layers.w[li + 1])
                done[k] = launch_attn(p, li + 1)
    side_done = torch.cuda.Event()
    side_done.record(side)
    main.wait_event(side_done)


def run_graph(fn, reps: int = 20) -> tuple[float, torch.cuda.CUDAGraph]:
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        fn()
    torch.cuda.current_stream().wait_stream(warm)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return replay_ms(graph, reps), graph  # the graph holds the outputs the caller checks


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[1024, 512])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ctx", type=int, nargs=2, default=[512, 768])
    ap.add_argument("--parts", type=int, nargs="+", default=[2])
    ap.add_argument("--carveouts", type=int, nargs="*", default=[16, 32, 48])
    ap.add_argument("--blas", default="", help="torch.backends.cuda.preferred_blas_library, e.g. cublaslt")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    if args.blas:
        torch.backends.cuda.preferred_blas_library(args.blas)
    print(f"{torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).multi_processor_count} SMs, "
          f"{args.layers} layers, contexts {args.ctx[0]}-{args.ctx[1]}, blas {torch.backends.cuda.preferred_blas_library()}")
    rows = []
    for batch in args.batch:
        gen = torch.Generator().manual_seed(0)
        layers = Layers(args.layers, batch, *args.ctx, gen)
        x0 = torch.randn(batch, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=None)
        # Reference output (serial, one batch).
        ref_parts = [Part(layers, slice(0, batch), x0)]
        serial(layers, ref_parts)
        ref = ref_parts[0].x.float()
        variants = [("serial", 1, None, 0), ("gemm only", 1, "gemm", 0), ("attn only", 1, "attn", 0),
                    *[(f"split{k}", k, None, 0) for k in args.parts],
                    *[(f"overlap{k}", k, "overlap", 0) for k in args.parts],
                    *[(f"overlap{k}+c{c}", k, "overlap", c) for k in args.parts for c in args.carveouts]]
        for name, k, kind, carve in variants:
            torch._C._set_sm_carveout_experimental(carve if carve else None)
            parts = [Part(layers, r, x0) for r in layers.halves(k)]
            x_in = [p.x.clone() for p in parts]
            side = torch.cuda.Stream()

            def step(layers=layers, parts=parts, x_in=x_in, kind=kind, side=side):
                for p, x in zip(parts, x_in):
                    p.x = x
                if kind == "overlap":
                    overlap(layers, parts, side)
                else:
                    serial(layers, parts, only=kind or "")

            ms, graph = run_graph(step)
            out = torch.cat([p.x for p in parts]).float()
            err = ((out - ref).norm() / ref.norm()).item()
            rows.append((batch, name, ms, err))
            del graph
            torch._C._set_sm_carveout_experimental(None)
        del layers
        torch.cuda.empty_cache()
    print("\n| batch | schedule | ms for the layers | µs a layer | × serial | rel err vs serial |")
    print("|---|---|---|---|---|---|")
    base = {}
    for batch, name, ms, err in rows:
        base.setdefault(batch, ms)
        print(f"| {batch} | {name} | {ms:.3f} | {ms * 1e3 / args.layers:.1f} | {ms / base[batch]:.3f} | {err:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
