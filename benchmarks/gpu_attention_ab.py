"""The paged attention kernel against another version of itself, case by case and tile by tile.

Run on the GPU machine from the repo root, with the other version saved as a file first:
    git show REV:pagedlm/kernels/triton_attention.py > /tmp/attention_base.py   (here, then carried)
    PYTHONPATH=. python3 benchmarks/gpu_attention_ab.py --baseline /tmp/attention_base.py

Llama-3.1-8B heads (32 query, 8 KV, head dim 128, bf16), 16-token blocks scattered over the
cache (``kernels_bench.make_batch``). For each case, the default tile config and (for cases
with multi-token rows) a few others, each run through both versions: graph-replayed time with
L2 flushed (``kernels/timing.py``), TFLOP/s counting the causal half, and the relative
difference between the two outputs (the baseline at the default config is the reference).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

import torch

from benchmarks.kernels_bench import make_batch, rel_err
from pagedlm.kernels import triton_attention as current
from pagedlm.kernels.timing import decode_time_ms

HQ, HKV, D = 32, 8, 128
TILES = ((64, 64, 4, 2), (64, 32, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2))


def cases() -> list[tuple[str, list[int], list[int]]]:
    g = torch.Generator().manual_seed(0)
    b256 = torch.randint(500, 701, (256,), generator=g).tolist()
    return [("prefill 1x512", [512], [512]), ("prefill 32x512", [512] * 32, [512] * 32),
            ("prefill 4x4096", [4096] * 4, [4096] * 4), ("chunk 2048@6144", [2048], [8192]),
            ("decode B=1 ctx=768", [1], [768]), ("decode B=256", [1] * 256, b256),
            ("mixed 128 dec + 512@512", [1] * 128 + [512], b256[:128] + [1024])]


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("attention_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="a triton_attention.py of another version")
    base = load_module(parser.parse_args().baseline)
    dev = torch.device("cuda")
    rows = []
    for name, q_lens, seq_lens in cases():
        batch = make_batch(q_lens, seq_lens, HQ, HKV, D, "cuda")
        flops = sum(4.0 * D * HQ * sum(s - q + i + 1 for i in range(q)) for q, s in zip(q_lens, seq_lens))
        default = current.default_config(len(seq_lens), HQ, HKV, D, max(q_lens), max(seq_lens), dev,
                                         num_tokens=sum(q_lens))
        as_base = lambda c: base.AttentionConfig(c.block_m, c.tile_n, c.num_warps, c.num_stages,  # noqa: E731
                                                 c.num_segments)
        ref = base.paged_attention_with_config(*batch, None, as_base(default), None)
        configs = [default] + ([current.AttentionConfig(*t) for t in TILES] if max(q_lens) > 1 else [])
        for cfg in dict.fromkeys(configs):
            err = rel_err(current.paged_attention_with_config(*batch, None, cfg, None), ref)
            t_new = decode_time_ms(lambda c=cfg: current.paged_attention_with_config(*batch, None, c, None), dev)
            t_old = decode_time_ms(lambda c=as_base(cfg): base.paged_attention_with_config(*batch, None, c, None), dev)
            mark = "*" if cfg == default else " "
            rows.append(f"{name:24} {mark}M{cfg.block_m:<3} N{cfg.tile_n:<3} w{cfg.num_warps} s{cfg.num_stages} "
                        f"seg{cfg.num_segments:<2} baseline {t_old * 1e3:8.1f} us {flops / t_old / 1e9:6.1f} TF | "
                        f"current {t_new * 1e3:8.1f} us {flops / t_new / 1e9:6.1f} TF | x{t_old / t_new:4.2f} "
                        f"err {err:.1e}")
            print(rows[-1], flush=True)
        del batch
    print("\n(* the default config; x = baseline time / current time)")


if __name__ == "__main__":
    main()
