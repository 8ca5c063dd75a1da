"""Decode GEMV at the Llama-3.1-8B linear shapes: the kernels the engine can pick against the
copy floor (weight bytes / measured copy bandwidth), for bf16 weights and 8-bit weights
(fp8 / int8 codes with per-token activation codes, as W8A8 runs them).

For each (format, layer, M): every candidate is checked against the reference first (PASS /
FAIL), then timed cold (L2 flushed, one launch); the best of each family is then timed the
way a decode step runs it: a CUDA graph of back-to-back launches over distinct weight copies
(more bytes than L2), so launch gaps and tails count. 8-bit rows start from bf16
activations, so the per-token quantization is part of every time. Families:
  base   cuBLAS (F.linear for bf16; quantize + the layer's GEMM for 8-bit)
  splitk the split-K GEMV with a separate reduction (triton_gemv / triton_scaled_gemv)
  fused  the one-launch GEMV (triton_gemv_fused), swept (8-bit: with native 8-bit dots too)
One H200 call:
  python benchmarks/gpu_gemv.py [--formats bf16,fp8,int8] [--m 1,4] [--output-json gemv.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import torch
import torch.nn.functional as F

from benchmarks.floors import measure_floors
from pagedlm.kernels import gemv as gemv_dispatch
from pagedlm.kernels import quant_reference as ref
from pagedlm.kernels import scaled_gemv as w8_dispatch
from pagedlm.kernels import triton_gemv, triton_gemv_fused, triton_scaled_gemv
from pagedlm.kernels.triton_gemv_fused import FusedGemvConfig

HIDDEN, INTER, VOCAB, Q, KV = 4096, 14336, 128256, 4096, 1024
SHAPES = {"qkv_proj": (Q + 2 * KV, HIDDEN), "o_proj": (HIDDEN, Q), "gate_up_proj": (2 * INTER, HIDDEN),
          "down_proj": (HIDDEN, INTER), "lm_head": (VOCAB, HIDDEN)}
CODES = {"fp8": ref.FP8_DTYPE, "int8": torch.int8}


def cold_ms(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=30, return_mode="median")


def fused_sweep(m: int, eight_bit: bool) -> list[FusedGemvConfig]:
    rows = triton_gemv_fused.quick_configs(m, eight_bit)
    tiles = [(4, 1024), (8, 512), (8, 1024), (16, 256), (16, 512)] if m <= 2 else [(4, 512), (8, 256)]
    rows += [FusedGemvConfig(bn, bk, s) for bn, bk in tiles for s in (1, 2, 4)]
    dots = [FusedGemvConfig(64, 128, 2, dot=True), FusedGemvConfig(32, 512, 2, dot=True),
            FusedGemvConfig(64, 512, 2, dot=True), FusedGemvConfig(32, 1024, 4, dot=True)]
    rows += dots + ([dataclasses.replace(c, native=True) for c in dots] if eight_bit else [])
    return list(dict.fromkeys(rows))


class Problem:
    """One (format, layer, M): weight copies, the activation, the reference and the runners."""

    def __init__(self, fmt: str, n: int, k: int, m: int, copies: int) -> None:
        g = torch.Generator(device="cuda").manual_seed(n + k + m)
        self.fmt, self.m, self.n, self.k = fmt, m, n, k
        self.x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
        if fmt == "bf16":
            self.ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
                       for _ in range(copies)]
            self.scales = [None] * copies
            self.expect = F.linear(self.x.float(), self.ws[0].float())
            self.weight_bytes = n * k * 2
        else:
            from pagedlm.kernels.quant_ops import gemm_for, quant_ops

            self.code = CODES[fmt]
            pairs = [ref.per_token_quant(torch.randn(n, k, device="cuda", generator=g), self.code)
                     for _ in range(copies)]
            self.ws = [w for w, _ in pairs]
            self.scales = [s.reshape(1, -1).contiguous() for _, s in pairs]
            self.ops = quant_ops(self.x.device)
            self.gemm = gemm_for(self.ops, fmt == "fp8", k, n)
            a, sa = self.quantize(self.x)
            self.expect = ref.scaled_mm(a, self.ws[0].t(), sa, self.scales[0], torch.bfloat16).float()
            self.weight_bytes = n * k
        self.floor_bytes = self.weight_bytes + m * k * 2 + m * n * 2

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ops.per_token_quant(x, self.code)

    def base(self, i: int) -> torch.Tensor:
        """cuBLAS: F.linear, or the engine's W8A8 path (quantize, then its 8-bit GEMM)."""
        if self.fmt == "bf16":
            return F.linear(self.x, self.ws[i])
        a, sa = self.quantize(self.x)
        return self.gemm(a, self.ws[i].t(), sa, self.scales[i], torch.bfloat16)

    def run(self, candidate: object, i: int) -> torch.Tensor:
        if self.fmt == "bf16":
            return gemv_dispatch._run(candidate, self.x, self.ws[i], None)
        a, sa = self.quantize(self.x)
        return w8_dispatch._run(candidate, a, self.ws[i], sa, self.scales[i], torch.bfloat16, None)

    def agrees(self, out: torch.Tensor) -> bool:
        return ((out.float() - self.expect).norm() / self.expect.norm()).item() < 1e-2

    def best(self, candidates: list) -> tuple[object | None, float, int]:
        """(fastest agreeing candidate, its cold ms, candidates that disagreed)."""
        best, best_ms, bad = None, math.inf, 0
        for candidate in candidates:
            try:
                out = self.run(candidate, 0)
            except Exception:  # noqa: BLE001 - e.g. too much shared memory for this tile
                continue
            if not self.agrees(out):
                bad += 1
                print(f"  FAIL {self.fmt} M={self.m} N={self.n} K={self.k} {candidate}")
                continue
            ms = cold_ms(lambda c=candidate: self.run(c, 0))
            if ms < best_ms:
                best, best_ms = candidate, ms
        return best, best_ms, bad

    def graph_us(self, fn) -> float:
        """Per launch, in a CUDA graph of back-to-back launches over every weight copy."""
        fn(0)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(len(self.ws)):
                fn(i)
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e3 / (5 * len(self.ws))


def families(fmt: str, m: int, k: int) -> dict[str, list]:
    fused = [c for c in fused_sweep(m, fmt != "bf16") if triton_gemv_fused.fits(m, k, c)]
    if fmt == "bf16":
        return {"splitk": triton_gemv.quick_configs(), "fused": [c for c in fused if not c.native]}
    return {"splitk": [c for c in triton_scaled_gemv.quick_configs(m) if triton_scaled_gemv.fits(k, c)],
            "fused": fused}


FAMILIES = ("splitk", "fused")


def measure(fmt: str, layer: str, m: int, bw: float) -> dict:
    n, k = SHAPES[layer]
    bytes_per = n * k * (2 if fmt == "bf16" else 1)
    copies = max(2, min(32, math.ceil(2e9 / bytes_per)))
    p = Problem(fmt, n, k, m, copies)
    row = dict(format=fmt, layer=layer, m=m, n=n, k=k, floor_us=p.floor_bytes / bw * 1e6, fails=0,
               base_cold_us=cold_ms(lambda: p.base(0)) * 1e3, base_graph_us=p.graph_us(p.base))
    for name, candidates in families(fmt, m, k).items():
        best, ms, bad = p.best(candidates)
        row["fails"] += bad
        row[f"{name}_config"] = repr(best)
        row[f"{name}_cold_us"] = ms * 1e3
        row[f"{name}_graph_us"] = p.graph_us(lambda i, c=best: p.run(c, i)) if best is not None else math.nan
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--formats", default="bf16,fp8,int8")
    p.add_argument("--m", default="1,4", help="comma-separated decode batch sizes (1-8)")
    p.add_argument("--layers", default=",".join(SHAPES))
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    floors = measure_floors()
    bw = floors["copy_bytes_per_s"]
    print(f"{floors['card']}: copy {bw / 1e12:.2f} TB/s")
    rows = []
    print(f"{'fmt':<5} {'layer':<13} {'M':>2} {'floor':>7} | graph us (% of floor): {'base':>12} "
          + " ".join(f"{f:>12}" for f in FAMILIES) + "  | best fused config")
    for fmt in args.formats.split(","):
        for layer in args.layers.split(","):
            for m in (int(v) for v in args.m.split(",")):
                if layer == "lm_head" and fmt != "bf16":
                    continue  # the LM head stays 16-bit in every format
                r = measure(fmt, layer, m, bw)
                rows.append(r)
                cells = []
                for f in ("base",) + FAMILIES:
                    us = r.get(f"{f}_graph_us", math.nan)
                    cells.append(f"{us:>6.1f} ({r['floor_us'] / us:>3.0%})" if us == us else f"{'-':>12}")
                best = min((f for f in FAMILIES if r.get(f"{f}_graph_us", math.nan) == r.get(f"{f}_graph_us")),
                           key=lambda f: r[f"{f}_graph_us"], default=None)
                print(f"{fmt:<5} {layer:<13} {m:>2} {r['floor_us']:>7.1f} | {'':>22}" + " ".join(cells)
                      + f"  | {best}: {r.get(f'{best}_config') if best else '-'}", flush=True)
                torch.cuda.empty_cache()
    for fmt in args.formats.split(","):
        for m in (int(v) for v in args.m.split(",")):
            sel = [r for r in rows if r["format"] == fmt and r["m"] == m and r["layer"] != "lm_head"]
            if sel:
                floor = 32 * sum(r["floor_us"] for r in sel)
                base = 32 * sum(r["base_graph_us"] for r in sel)
                best = 32 * sum(min(v for v in (r.get(f"{f}_graph_us", math.nan) for f in ("base",) + FAMILIES)
                                    if v == v) for r in sel)
                print(f"TOTAL {fmt} M={m}, 32 layers: floor {floor / 1e3:.3f} ms, base {base / 1e3:.3f} ms, "
                      f"best per layer {best / 1e3:.3f} ms ({floor / best:.0%} of the floor)")
    fails = sum(r["fails"] for r in rows)
    print("FAIL: some GEMV configs disagreed with the reference" if fails else "PASS: every GEMV config agrees")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"floors": floors, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
