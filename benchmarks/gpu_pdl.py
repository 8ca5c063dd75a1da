"""Programmatic dependent launch (pagedlm.kernels.pdl) in a chain of decode layers: Llama-3.1-8B
shapes, bf16, one token. A layer is [add + RMSNorm, qkv_proj, o_proj, add + RMSNorm, gate_up_proj,
SiLU·mul, down_proj] with its own weights (32 layers, more bytes than L2), replayed from one CUDA
graph, as a decode step runs them (attention and RoPE are left out: a chain of the linear layers
and the kernels between them is the question).

For PDL off and on: the linear layers by cuBLAS, and by the engine's first-use tuner
(``kernels.gemv``: the Triton GEMV configs it picks under that setting, or cuBLAS). Check: the
tuner's chain gives the same bits with PDL off and on (same kernels, only the launches differ).
Floor: the chain's weight bytes / the copy bandwidth measured in the same run.

  python3 benchmarks/gpu_pdl.py [--layers 32] [--output-json pdl.json]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from benchmarks.floors import measure_floors
from pagedlm.kernels import gemv, pdl, triton_activation, triton_norm
from pagedlm.kernels.timing import replay_ms

HIDDEN, INTER, Q, KV = 4096, 14336, 4096, 1024
SHAPES = {"qkv_proj": (Q + 2 * KV, HIDDEN), "o_proj": (HIDDEN, Q), "gate_up_proj": (2 * INTER, HIDDEN),
          "down_proj": (HIDDEN, INTER)}
EPS = 1e-5


class Chain:
    def __init__(self, layers: int) -> None:
        g = torch.Generator(device="cuda").manual_seed(0)
        self.w = [{name: torch.randn(n, k, generator=g, device="cuda", dtype=torch.bfloat16) * k**-0.5
                   for name, (n, k) in SHAPES.items()} for _ in range(layers)]
        self.norm = torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16)
        self.x0 = torch.randn(1, HIDDEN, generator=g, device="cuda", dtype=torch.bfloat16)
        self.bytes = sum(t.numel() * t.element_size() for layer in self.w for t in layer.values())

    def run(self, linear) -> torch.Tensor:
        """linear(name, x, weight) -> y, for every linear layer of the chain."""
        h, res = self.x0, torch.zeros_like(self.x0)
        for w in self.w:
            x, res = triton_norm.fused_add_rms_norm(h, res, self.norm, EPS)
            qkv = linear("qkv_proj", x, w["qkv_proj"])
            o = linear("o_proj", qkv[:, :Q], w["o_proj"])
            x, res = triton_norm.fused_add_rms_norm(o, res, self.norm, EPS)
            h = linear("down_proj", triton_activation.silu_and_mul(linear("gate_up_proj", x, w["gate_up_proj"])),
                       w["down_proj"])
        return h + res

    def graph_us(self, linear) -> tuple[float, torch.Tensor]:
        """(median µs of one replay of the whole chain, its output)."""
        out = self.run(linear)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.run(linear)
        return replay_ms(graph, replays=7) * 1e3, out.clone()


def cublas(name, x, w):
    return F.linear(x, w)


def tuned(name, x, w):
    return gemv.unquantized_linear(x, w)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--output-json")
    args = p.parse_args()
    floors = measure_floors()
    bw = floors["copy_bytes_per_s"]
    chain = Chain(args.layers)
    floor_us = chain.bytes / bw * 1e6
    print(f"{floors['card']}: copy {bw / 1e12:.2f} TB/s; chain of {args.layers} layers, {chain.bytes / 1e9:.2f} GB "
          f"of weights, floor {floor_us:.0f} us")
    rows, picks, outs = [], {}, {}
    for on in (False, True):
        pdl.set_enabled(on)
        label = "PDL on" if on else "PDL off"
        rows.append((label, "cuBLAS", chain.graph_us(cublas)[0]))
        gemv._choice.clear()  # the engine's first-use tuner, under this PDL setting
        rows.append((label, "engine tuner (kernels.gemv)", chain.graph_us(tuned)[0]))
        picks[label] = {name: str(gemv._choice.get((1, n, k, torch.bfloat16))) for name, (n, k) in SHAPES.items()}
    for on in (False, True):  # the same kernels (the PDL-on picks) with PDL off and on
        pdl.set_enabled(on)
        outs[on] = chain.graph_us(tuned)[1]
    pdl.set_enabled(None)
    check = "PASS" if torch.equal(outs[False], outs[True]) else "FAIL"
    print(f"{check}: the tuner's chain gives the same bits with PDL off and on")
    for label, chosen in picks.items():
        print(f"tuner picks, {label}: {chosen}")
    print("\n| PDL | linear layers | us per layer | x floor |\n|---|---|---|---|")
    for label, linear, us in rows:
        print(f"| {label} | {linear} | {us / args.layers:.1f} | {us / floor_us:.2f} |")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"floors": floors, "floor_us": floor_us, "layers": args.layers, "picks": picks, "check": check,
                       "rows": [dict(zip(("pdl", "linear", "us"), r)) for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
