"""Does the first-use tuner's timing pick what runs fastest in a decode step? For the 8-bit
decode GEMVs (fp8 / int8 W8A8, Llama-3.1-8B shapes, M = 1) every candidate of the engine's
tuner (``scaled_gemv._candidates``) is timed four ways, the picks of each way are then run as
32 decoder layers' linear part (``gpu_gemv.LayerChain``, the step's own order of kernels):

  tuner   ``timing.decode_time_ms``: graph(L2 flush, fn) - graph(flush), the flush launched
          with PDL (what the tuner uses today)
  plain   the same with the flush an ordinary kernel (no programmatic overlap with it)
  copies  back-to-back launches over distinct weight copies (more bytes than L2)
  between the same with a small PDL kernel (an activation quantization) between launches, as
          in a step

  PYTHONPATH=. python3 benchmarks/gpu_tuner_timing.py [--formats fp8,int8]
"""

from __future__ import annotations

import argparse
import math

import torch

from benchmarks.gpu_gemv import SHAPES, LayerChain, Problem, captured_ms
from pagedlm.kernels import quant_reference as ref
from pagedlm.kernels import scaled_gemv as w8_dispatch
from pagedlm.kernels import timing

LAYERS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
WAYS = ("tuner", "plain", "copies", "between")


def _plain_decode_ms(fn) -> float:
    buf = timing.flush_buffer(torch.device("cuda", torch.cuda.current_device()))
    both = timing._graph_ms(lambda: (buf.zero_(), fn()))
    flush = timing._graph_ms(lambda: buf.zero_())
    return max(both - flush, 0.0) / timing._CALLS


def times(p: Problem, config: object, code: torch.dtype) -> dict[str, float]:
    from pagedlm.kernels.quant_ops import quant_ops

    x = torch.randn(1, p.k, device="cuda", dtype=torch.bfloat16)
    q = quant_ops(x.device)
    n = len(p.ws)
    return {
        "tuner": timing.decode_time_ms(lambda: p.run(config, 0), x.device) * 1e3,
        "plain": _plain_decode_ms(lambda: p.run(config, 0)) * 1e3,
        "copies": captured_ms(lambda: [p.run(config, i) for i in range(n)]) * 1e3 / n,
        "between": (captured_ms(lambda: [(q.per_token_quant(x, code), p.run(config, i)) for i in range(n)])
                    - captured_ms(lambda: [q.per_token_quant(x, code) for _ in range(n)])) * 1e3 / n,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--formats", default="fp8,int8")
    args = ap.parse_args()
    for fmt in args.formats.split(","):
        code = {"fp8": ref.FP8_DTYPE, "int8": torch.int8}[fmt]
        picks: dict[str, dict[str, object]] = {w: {} for w in WAYS}
        for layer in LAYERS:
            n, k = SHAPES[layer]
            p = Problem(fmt, n, k, 1, max(2, min(48, math.ceil(1e9 / (n * k)))))
            rows = []
            for config in [None] + w8_dispatch._candidates(1, k, True):
                try:
                    if config is not None and not p.agrees(p.run(config, 0)):
                        continue
                    rows.append((config, times(p, config, code)))
                except Exception as e:  # noqa: BLE001
                    print(f"  skip {config}: {type(e).__name__}")
            for way in WAYS:
                best = min(rows, key=lambda r: r[1][way])
                picks[way][layer] = best[0]
                print(f"{fmt} {layer:<13} {way:<8} pick {best[0]}  " + "  ".join(
                    f"{w} {best[1][w]:.1f}" for w in WAYS), flush=True)
            del p
            torch.cuda.empty_cache()
        chain = LayerChain(fmt, 32)
        for way in WAYS:
            ms = chain.graph_ms(picks[way])
            print(f"CHAIN {fmt} picks by {way:<8}: {ms * 1e3 / 32:.1f} us/layer", flush=True)
        del chain
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
