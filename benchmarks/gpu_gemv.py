"""Decode GEMV at the Llama-3.1-8B linear shapes: the kernels the engine can pick against the
copy floor (weight bytes / measured copy bandwidth), for bf16 weights and 8-bit weights
(fp8 / int8 codes with per-token activation codes, as W8A8 runs them).

For each (format, layer, M): every candidate is checked against the reference first (PASS /
FAIL), then timed cold (L2 flushed, one launch); the best of each family is then timed the
way a decode step runs it: a CUDA graph of back-to-back launches over distinct weight copies
(more bytes than L2), so launch gaps and tails count. Families:
  base   cuBLAS (F.linear for bf16, the layer's GEMM for 8-bit)
  splitk the split-K GEMV with a separate reduction (triton_gemv / triton_scaled_gemv)
  fused  the one-launch GEMV (triton_gemv_fused), swept
One H200 call:
  python benchmarks/gpu_gemv.py [--formats bf16,fp8,int8] [--m 1,4] [--output-json gemv.json]
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

from benchmarks.floors import measure_floors
from pagedlm.kernels import quant_reference as ref
from pagedlm.kernels import triton_gemv, triton_gemv_fused, triton_scaled_gemv
from pagedlm.kernels.triton_gemv_fused import FusedGemvConfig

HIDDEN, INTER, VOCAB, Q, KV = 4096, 14336, 128256, 4096, 1024
SHAPES = {"qkv_proj": (Q + 2 * KV, HIDDEN), "o_proj": (HIDDEN, Q), "gate_up_proj": (2 * INTER, HIDDEN),
          "down_proj": (HIDDEN, INTER), "lm_head": (VOCAB, HIDDEN)}
CODES = {"fp8": ref.FP8_DTYPE, "int8": torch.int8}


def cold_ms(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=30, return_mode="median")


def fused_sweep(m: int) -> list[FusedGemvConfig]:
    rows = triton_gemv_fused.quick_configs(m)
    tiles = [(4, 1024), (8, 512), (8, 1024), (16, 256), (16, 512), (32, 256)] if m <= 2 else [(4, 512), (8, 256), (4, 256)]
    rows += [FusedGemvConfig(bn, bk, s) for bn, bk in tiles for s in (1, 2, 4, 8)]
    rows += [FusedGemvConfig(16, 512, s, 8) for s in (1, 4)] if m <= 2 else []
    rows += [FusedGemvConfig(64, 256, 2, dot=True), FusedGemvConfig(32, 512, 4, dot=True)]
    return list(dict.fromkeys(rows))


class Problem:
    """One (format, layer, M): weight copies, the activation, the reference and each family's runner."""

    def __init__(self, fmt: str, n: int, k: int, m: int, copies: int) -> None:
        g = torch.Generator(device="cuda").manual_seed(n + k + m)
        self.fmt, self.m, self.n, self.k = fmt, m, n, k
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
        if fmt == "bf16":
            self.ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
                       for _ in range(copies)]
            self.x, self.sx, self.scales = x, None, [None] * copies
            self.expect = F.linear(x.float(), self.ws[0].float())
            self.weight_bytes = n * k * 2
        else:
            code = CODES[fmt]
            pairs = [ref.per_token_quant(torch.randn(n, k, device="cuda", generator=g), code) for _ in range(copies)]
            self.ws = [w for w, _ in pairs]
            self.scales = [s.reshape(1, -1).contiguous() for _, s in pairs]
            self.x, self.sx = ref.per_token_quant(x, code)
            self.expect = ref.scaled_mm(self.x, self.ws[0].t(), self.sx, self.scales[0], torch.bfloat16).float()
            self.weight_bytes = n * k
        self.floor_bytes = self.weight_bytes + m * k * 2 + m * n * 2

    def base(self, i: int) -> torch.Tensor:
        """cuBLAS: F.linear, or the 8-bit GEMM the engine's W8A8 layers run."""
        if self.fmt == "bf16":
            return F.linear(self.x, self.ws[i])
        from pagedlm.kernels.quant_ops import gemm_for, quant_ops

        gemm = gemm_for(quant_ops(self.x.device), self.fmt == "fp8", self.k, self.n)
        return gemm(self.x, self.ws[i].t(), self.sx, self.scales[i], torch.bfloat16)

    def run(self, config: object, i: int) -> torch.Tensor:
        if isinstance(config, FusedGemvConfig):
            return triton_gemv_fused.fused_gemv(self.x, self.ws[i], self.sx, self.scales[i], torch.bfloat16,
                                                None, config)
        if self.fmt == "bf16":
            return triton_gemv.gemv(self.x, self.ws[i], None, config)
        return triton_scaled_gemv.scaled_gemv(self.x, self.ws[i], self.sx, self.scales[i], torch.bfloat16, None,
                                              config)

    def agrees(self, out: torch.Tensor) -> bool:
        return ((out.float() - self.expect).norm() / self.expect.norm()).item() < 1e-2

    def best(self, configs: list) -> tuple[object | None, float, int]:
        """(fastest agreeing config, its cold ms, configs that disagreed)."""
        best, best_ms, bad = None, math.inf, 0
        for config in configs:
            try:
                out = self.run(config, 0)
            except Exception:  # noqa: BLE001 - e.g. too much shared memory for this tile
                continue
            if not self.agrees(out):
                bad += 1
                print(f"  FAIL {self.fmt} M={self.m} N={self.n} K={self.k} {config}")
                continue
            ms = cold_ms(lambda c=config: self.run(c, 0))
            if ms < best_ms:
                best, best_ms = config, ms
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


def measure(fmt: str, layer: str, m: int, bw: float) -> dict:
    n, k = SHAPES[layer]
    bytes_per = n * k * (2 if fmt == "bf16" else 1)
    copies = max(2, min(32, math.ceil(2e9 / bytes_per)))
    p = Problem(fmt, n, k, m, copies)
    splitk = (triton_gemv.quick_configs() if fmt == "bf16"
              else [c for c in triton_scaled_gemv.quick_configs(m) if triton_scaled_gemv.fits(k, c)])
    fused = [c for c in fused_sweep(m) if triton_gemv_fused.fits(m, k, c)]
    s_cfg, s_ms, s_bad = p.best(splitk)
    f_cfg, f_ms, f_bad = p.best(fused)
    floor_us = p.floor_bytes / bw * 1e6
    row = dict(format=fmt, layer=layer, m=m, n=n, k=k, floor_us=floor_us, fails=s_bad + f_bad,
               base_cold_us=cold_ms(lambda: p.base(0)) * 1e3, splitk_cold_us=s_ms * 1e3, fused_cold_us=f_ms * 1e3,
               splitk_config=repr(s_cfg), fused_config=repr(f_cfg))
    row["base_graph_us"] = p.graph_us(p.base)
    row["splitk_graph_us"] = p.graph_us(lambda i: p.run(s_cfg, i)) if s_cfg else math.nan
    row["fused_graph_us"] = p.graph_us(lambda i: p.run(f_cfg, i)) if f_cfg else math.nan
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
    head = (f"{'fmt':<5} {'layer':<13} {'M':>2} {'floor':>7} | {'cold: base':>10} {'splitk':>7} {'fused':>7} | "
            f"{'graph: base':>11} {'%bw':>4} {'splitk':>7} {'%bw':>4} {'fused':>7} {'%bw':>4}  fused config")
    print(head)
    for fmt in args.formats.split(","):
        for layer in args.layers.split(","):
            for m in (int(v) for v in args.m.split(",")):
                if layer == "lm_head" and fmt != "bf16":
                    continue  # the LM head stays 16-bit in every format
                r = measure(fmt, layer, m, bw)
                rows.append(r)
                pct = {key: r["floor_us"] / r[key] for key in ("base_graph_us", "splitk_graph_us", "fused_graph_us")}
                print(f"{fmt:<5} {layer:<13} {m:>2} {r['floor_us']:>7.1f} | {r['base_cold_us']:>10.1f} "
                      f"{r['splitk_cold_us']:>7.1f} {r['fused_cold_us']:>7.1f} | {r['base_graph_us']:>11.1f} "
                      f"{pct['base_graph_us']:>4.0%} {r['splitk_graph_us']:>7.1f} {pct['splitk_graph_us']:>4.0%} "
                      f"{r['fused_graph_us']:>7.1f} {pct['fused_graph_us']:>4.0%}  {r['fused_config']}", flush=True)
                torch.cuda.empty_cache()
    for fmt in args.formats.split(","):
        for m in (int(v) for v in args.m.split(",")):
            sel = [r for r in rows if r["format"] == fmt and r["m"] == m and r["layer"] != "lm_head"]
            if sel:
                tot = {key: 32 * sum(r[key] for r in sel) for key in ("floor_us", "base_graph_us", "fused_graph_us")}
                best = 32 * sum(min(v for v in (r["base_graph_us"], r["splitk_graph_us"], r["fused_graph_us"])
                                    if v == v) for r in sel)
                print(f"TOTAL {fmt} M={m}, 32 layers: floor {tot['floor_us'] / 1e3:.3f} ms, base "
                      f"{tot['base_graph_us'] / 1e3:.3f} ms, fused {tot['fused_graph_us'] / 1e3:.3f} ms, best of "
                      f"three {best / 1e3:.3f} ms")
    fails = sum(r["fails"] for r in rows)
    print("FAIL: some GEMV configs disagreed with the reference" if fails else "PASS: every GEMV config agrees")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"floors": floors, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
