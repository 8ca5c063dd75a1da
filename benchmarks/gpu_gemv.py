"""Decode GEMV at the Llama-3.1-8B linear shapes: the kernels the engine can pick against the
copy floor (weight bytes / measured copy bandwidth), for bf16 weights and 8-bit weights
(fp8 / int8 codes times per-token activation codes, as W8A8 runs them; ``fp8w``: fp8 codes
times the bf16 activations, as W8A16 runs them, with no activation quantization).

Every time is taken the way a decode step runs the kernel: a CUDA graph of back-to-back
launches over distinct weight copies (more bytes than L2), with PDL where the card has it, so
launch gaps, ramps and tails count. The activations come in quantized (in a step the norm
before qkv / gate_up emits the codes; the quantization of o / down's inputs is a kernel of its
own and is counted in the layer chain below).

For each (format, layer, M) every candidate is first checked against the reference (1e-2
relative), then timed; the table shows the best of each family and the engine's own pick:
  base    cuBLAS (F.linear for bf16; the layer's 8-bit GEMM)
  splitk  the split-K GEMV with a separate reduction (triton_gemv / triton_scaled_gemv)
  tiles   the one-launch GEMV (triton_gemv_fused) on [M, N, K] multiply-add tiles
  chunk   the one-launch GEMV, one row, products summed in runs of one 16-byte load per thread
  dots    the one-launch GEMV on tensor-core tiles (8-bit: also native 8-bit dots)
  cuda    (8-bit) the CUDA C++ kernel on native 8-bit tensor-core steps (cuda_w8a8), where it builds
  engine  what the first-use tuner picks (kernels.gemv / kernels.scaled_gemv), timed the same way

``--layer-chain`` then times 32 decoder layers' linear part in one graph at M = 1 (norm (with
codes), qkv, o's input quantization, o, add + norm (with codes), gate_up, SiLU·mul, down's input
quantization, down; each layer its own weights) with the engine's picks and with the best
candidate of each layer, against the weight-bytes floor.

  python3 benchmarks/gpu_gemv.py [--formats bf16,fp8,int8,fp8w] [--m 1,4] [--layer-chain] [--output-json gemv.json]
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
from pagedlm.kernels import triton_gemv_fused, triton_scaled_gemv
from pagedlm.kernels.timing import replay_ms
from pagedlm.kernels.triton_gemv_fused import FusedGemvConfig

HIDDEN, INTER, VOCAB, Q, KV = 4096, 14336, 128256, 4096, 1024
SHAPES = {"qkv_proj": (Q + 2 * KV, HIDDEN), "o_proj": (HIDDEN, Q), "gate_up_proj": (2 * INTER, HIDDEN),
          "down_proj": (HIDDEN, INTER), "lm_head": (VOCAB, HIDDEN)}
CODES = {"fp8": ref.FP8_DTYPE, "int8": torch.int8, "fp8w": ref.FP8_DTYPE}
WEIGHT_ONLY = {"fp8w"}  # 8-bit weights, bf16 activations
FAMILIES = ("base", "splitk", "tiles", "chunk", "dots", "cuda", "engine")


def family(config: object) -> str:
    from pagedlm.kernels.cuda_w8a8 import CudaW8A8Config

    if config is None:
        return "base"
    if isinstance(config, CudaW8A8Config):
        return "cuda"
    if not isinstance(config, FusedGemvConfig):
        return "splitk"
    return "dots" if config.dot else "chunk" if config.chunk else "tiles"


def sweep(fmt: str, m: int, k: int) -> list[object]:
    """The engine's candidates plus a wider grid around the tiles that won before."""
    eight_bit = fmt != "bf16"
    codes = fmt not in WEIGHT_ONLY
    configs = (w8_dispatch._candidates(m, k, codes) if eight_bit else gemv_dispatch.candidates(m, k))
    tiles = [(4, 1024), (8, 512), (8, 1024), (16, 256), (16, 512)] if m <= 2 else [(4, 512), (8, 256)]
    configs += [FusedGemvConfig(bn, bk, s) for bn, bk in tiles for s in (1, 2, 4)]
    if m == 1:  # chunked tiles: block_k counted in bytes' worth of 8-bit codes, halved for 16 bits
        chunk, half = (16, 1) if eight_bit else (8, 2)
        for bn, bk, s, w, st in [(4, 2048, 1, 4, 2), (2, 4096, 1, 4, 2), (4, 4096, 1, 4, 2), (8, 2048, 1, 4, 2),
                                 (4, 2048, 1, 4, 1), (4, 2048, 1, 4, 3), (4, 2048, 1, 2, 2), (4, 2048, 1, 8, 2),
                                 (8, 4096, 1, 8, 2), (16, 2048, 1, 8, 2), (4, 2048, 2, 4, 2), (2, 2048, 1, 2, 2),
                                 (1, 4096, 1, 2, 2), (2, 1024, 1, 2, 2)]:
            configs.append(FusedGemvConfig(bn, bk // half, s, w, st, chunk=chunk))
        configs.append(FusedGemvConfig(4, 2048 // half, 1, 4, 2, chunk=2 * chunk))
    dots = [FusedGemvConfig(bn, bk, s, w, st, dot=True) for bn, bk, s, w, st in
            [(64, 128, 2, 4, 2), (32, 512, 2, 4, 2), (64, 512, 2, 4, 2), (64, 512, 4, 4, 3), (128, 512, 1, 8, 3),
             (128, 256, 4, 8, 3), (64, 256, 4, 4, 4)]]
    configs += dots + ([dataclasses.replace(c, native=True) for c in dots] if eight_bit and codes else [])
    from pagedlm.kernels import cuda_w8a8

    if eight_bit and codes and m <= cuda_w8a8.MAX_M and k % 128 == 0 and cuda_w8a8.available():
        configs += [cuda_w8a8.CudaW8A8Config(w, u, s) for w in cuda_w8a8.WARPS for u in cuda_w8a8.UNROLL
                    for s in (1, 2, 4, 8)]
    fits = [c for c in configs if (triton_gemv_fused.fits(m, k, c) if isinstance(c, FusedGemvConfig)
                                   else family(c) == "cuda" or triton_scaled_gemv.fits(k, c))]
    return list(dict.fromkeys(fits))


class Problem:
    """One (format, layer, M): weight copies, the (quantized) activation, the reference, the runners."""

    def __init__(self, fmt: str, n: int, k: int, m: int, copies: int) -> None:
        g = torch.Generator(device="cuda").manual_seed(n + k + m)
        self.fmt, self.m, self.n, self.k = fmt, m, n, k
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=g)
        if fmt == "bf16":
            self.ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=g) * 0.02
                       for _ in range(copies)]
            self.scales = [None] * copies
            self.a, self.sa = x, None
            self.expect = F.linear(x.float(), self.ws[0].float())
            self.weight_bytes = n * k * 2
        else:
            from pagedlm.kernels.quant_ops import gemm_for, quant_ops

            pairs = [ref.per_token_quant(torch.randn(n, k, device="cuda", generator=g), CODES[fmt])
                     for _ in range(copies)]
            self.ws = [w for w, _ in pairs]
            self.scales = [s.reshape(1, -1).contiguous() for _, s in pairs]
            if fmt in WEIGHT_ONLY:
                self.a, self.sa = x, None
                self.expect = ref.weight_only_mm(x, self.ws[0].t(), self.scales[0]).float()
            else:
                self.a, self.sa = ref.per_token_quant(x, CODES[fmt])
                self.expect = ref.scaled_mm(self.a, self.ws[0].t(), self.sa, self.scales[0], torch.bfloat16).float()
            self.weight_bytes = n * k
        self.floor_bytes = self.weight_bytes + m * k * 2 + m * n * 2

    def run(self, config: object, i: int) -> torch.Tensor:
        return run_linear(config, self.a, self.sa, self.ws[i], self.scales[i])

    def agrees(self, out: torch.Tensor) -> bool:
        return ((out.float() - self.expect).norm() / self.expect.norm()).item() < 1e-2

    def graph_us(self, config: object) -> float:
        """Per launch, in a CUDA graph of back-to-back launches over every weight copy."""
        return captured_ms(lambda: [self.run(config, i) for i in range(len(self.ws))]) * 1e3 / len(self.ws)

    def engine_pick(self) -> object:
        if self.fmt == "bf16":
            return gemv_dispatch.tune(self.a, self.ws[0])
        return w8_dispatch._tune(self.a, self.ws[0], self.sa, self.scales[0], torch.bfloat16,
                                 lambda: self.run(None, 0))


def captured_ms(body, replays: int = 5) -> float:
    """Median ms of one replay of a CUDA graph of ``body()`` (run once eagerly first: compiles)."""
    body()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return replay_ms(graph, replays)


def run_linear(config: object, a: torch.Tensor, sa: torch.Tensor | None, w: torch.Tensor,
               sw: torch.Tensor | None) -> torch.Tensor:
    """a @ w.T through ``config`` (None: cuBLAS / the layer's 8-bit GEMM)."""
    if sw is None:
        return F.linear(a, w) if config is None else gemv_dispatch._run(config, a, w, None)
    if config is None:
        from pagedlm.kernels.quant_ops import gemm_for, quant_ops

        if sa is None:  # W8A16
            return quant_ops(a.device).weight_only_mm(a, w.t(), sw)
        return gemm_for(quant_ops(a.device), w.dtype == ref.FP8_DTYPE, w.shape[1], w.shape[0])(
            a, w.t(), sa, sw, torch.bfloat16)
    return w8_dispatch._run(config, a, w, sa, sw, torch.bfloat16, None)


def measure(fmt: str, layer: str, m: int, bw: float) -> dict:
    n, k = SHAPES[layer]
    bytes_per = n * k * (2 if fmt == "bf16" else 1)
    p = Problem(fmt, n, k, m, max(2, min(48, math.ceil(1e9 / bytes_per))))
    row = dict(format=fmt, layer=layer, m=m, n=n, k=k, floor_us=p.floor_bytes / bw * 1e6, fails=0)
    timed = [(p.graph_us(None), None)]
    for config in sweep(fmt, m, k):
        try:
            out = p.run(config, 0)
        except Exception:  # noqa: BLE001 - e.g. more shared memory than the card has
            continue
        if not p.agrees(out):
            row["fails"] += 1
            print(f"  FAIL {fmt} {layer} M={m}: {config}")
            continue
        timed.append((p.graph_us(config), config))
    for us, config in sorted(timed, key=lambda t: t[0]):
        name = family(config)
        if f"{name}_us" not in row:
            row[f"{name}_us"], row[f"{name}_config"] = us, repr(config)
    row["best_config"] = min(timed, key=lambda t: t[0])[1]
    pick = p.engine_pick()
    row["engine_us"], row["engine_config"], row["engine_pick"] = p.graph_us(pick), repr(pick), pick
    return row


class LayerChain:
    """32 decoder layers' linear part at M = 1, each layer its own weights (see the docstring)."""

    def __init__(self, fmt: str, layers: int) -> None:
        g = torch.Generator(device="cuda").manual_seed(7)
        self.code = CODES.get(fmt)
        self.act_code = None if fmt in WEIGHT_ONLY else self.code  # what the activations are quantized to
        self.w = []
        for _ in range(layers):
            weights = {}
            for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
                n, k = SHAPES[name]
                w = torch.randn(n, k, device="cuda", generator=g, dtype=torch.bfloat16) * k**-0.5
                weights[name] = (w, None) if self.code is None else \
                    (lambda q, s: (q, s.reshape(1, -1).contiguous()))(*ref.per_token_quant(w, self.code))
            self.w.append(weights)
        self.bytes = sum(w.numel() * w.element_size() for layer in self.w for w, _ in layer.values())
        self.norm = torch.ones(HIDDEN, device="cuda", dtype=torch.bfloat16)
        self.x0 = torch.randn(1, HIDDEN, device="cuda", dtype=torch.bfloat16, generator=g)

    def _norm(self, h, res):
        from pagedlm.kernels import triton_norm

        if self.act_code is None:
            x, res = triton_norm.fused_add_rms_norm(h, res, self.norm, 1e-5)
            return x, None, res
        return triton_norm.fused_add_rms_norm_quant(h, res, self.norm, 1e-5, self.act_code)

    def _quant(self, x):
        from pagedlm.kernels.quant_ops import quant_ops

        return (x, None) if self.act_code is None else quant_ops(x.device).per_token_quant(x, self.act_code)

    def run(self, picks: dict) -> torch.Tensor:
        from pagedlm.kernels import triton_activation

        h, res = self.x0, torch.zeros_like(self.x0)
        for layer in self.w:
            a, sa, res = self._norm(h, res)
            qkv = run_linear(picks["qkv_proj"], a, sa, *layer["qkv_proj"])
            o = run_linear(picks["o_proj"], *self._quant(qkv[:, :Q]), *layer["o_proj"])
            a, sa, res = self._norm(o, res)
            up = run_linear(picks["gate_up_proj"], a, sa, *layer["gate_up_proj"])
            h = run_linear(picks["down_proj"], *self._quant(triton_activation.silu_and_mul(up)), *layer["down_proj"])
        return h

    def graph_ms(self, picks: dict) -> float:
        return captured_ms(lambda: self.run(picks), replays=7)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--formats", default="bf16,fp8,int8")
    p.add_argument("--m", default="1,4", help="comma-separated decode batch sizes (1-8)")
    p.add_argument("--layers", default=",".join(SHAPES))
    p.add_argument("--layer-chain", action="store_true", help="also time 32 decoder layers' linear part at M = 1")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()
    floors = measure_floors()
    bw = floors["copy_bytes_per_s"]
    print(f"{floors['card']}: copy {bw / 1e12:.2f} TB/s")
    rows, chains = [], []
    print(f"{'fmt':<5} {'layer':<13} {'M':>2} {'floor':>6} | graph us (% of floor): "
          + " ".join(f"{f:>12}" for f in FAMILIES) + "  | best config")
    for fmt in args.formats.split(","):
        for layer in args.layers.split(","):
            for m in (int(v) for v in args.m.split(",")):
                if layer == "lm_head" and fmt != "bf16":
                    continue  # the LM head stays 16-bit in every format
                r = measure(fmt, layer, m, bw)
                rows.append(r)
                cells = [f"{r[f'{f}_us']:>6.1f} ({r['floor_us'] / r[f'{f}_us']:>3.0%})" if f"{f}_us" in r
                         else f"{'-':>12}" for f in FAMILIES]
                print(f"{fmt:<5} {layer:<13} {m:>2} {r['floor_us']:>6.1f} | {'':>22}" + " ".join(cells)
                      + f"  | {r['best_config']}", flush=True)
                torch.cuda.empty_cache()
        if args.layer_chain:
            chain = LayerChain(fmt, 32)
            floor_ms = chain.bytes / bw * 1e3
            for label, key in (("engine picks", "engine_pick"), ("best per layer", "best_config")):
                picks = {r["layer"]: r[key] for r in rows if r["format"] == fmt and r["m"] == 1}
                if len(picks) < 4:
                    continue
                ms = chain.graph_ms(picks)
                chains.append(dict(format=fmt, picks=label, ms=ms, floor_ms=floor_ms))
                print(f"LAYER CHAIN {fmt}, 32 layers, {label}: {ms:.3f} ms = {ms * 1e3 / 32:.1f} us/layer, "
                      f"floor {floor_ms:.3f} ms ({floor_ms / ms:.0%})", flush=True)
            del chain
            torch.cuda.empty_cache()
    fails = sum(r["fails"] for r in rows)
    print("FAIL: some GEMV configs disagreed with the reference" if fails else "PASS: every GEMV config agrees")
    if args.output_json:
        for r in rows:
            r["engine_pick"], r["best_config"] = repr(r["engine_pick"]), repr(r["best_config"])
        with open(args.output_json, "w") as f:
            json.dump({"floors": floors, "rows": rows, "layer_chains": chains}, f, indent=2)


if __name__ == "__main__":
    main()
