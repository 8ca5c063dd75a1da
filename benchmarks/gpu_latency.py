"""Batch-1 latency of the Llama-3.1-8B shape against the weight-bytes / copy-bandwidth floor.

python benchmarks/gpu_latency.py [--enforce-eager]
"""

from __future__ import annotations

import argparse
import json
import tempfile


from benchmarks.floors import measure_floors
from pagedlm import LLM
from pagedlm.benchmarks.latency import measure
from pagedlm.benchmarks.shapes import make_shape_dir


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama-3.1-8b")
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--enforce-eager", action="store_true")
    args = p.parse_args()
    floors = measure_floors()
    model_dir = make_shape_dir(args.shape, tempfile.mkdtemp())
    llm = LLM(str(model_dir), load_format="dummy", max_model_len=args.input_len + args.output_len + 16,
              max_num_seqs=max(8, args.batch_size), enforce_eager=args.enforce_eager)
    weight_bytes = sum(p.numel() * p.element_size() for p in llm.llm_engine.engine_core.runner.model.parameters())
    r = measure(llm, args.batch_size, args.input_len, args.output_len, warmup=1, iters=3)
    floor_ms = weight_bytes / floors["copy_bytes_per_s"] * 1e3
    r.update(floors, weight_bytes=weight_bytes, floor_ms=floor_ms, enforce_eager=args.enforce_eager)
    print(json.dumps(r, indent=2))
    print(f"\n{floors['card']}: TPOT {r['time_per_output_token_ms']:.2f} ms vs floor {floor_ms:.2f} ms "
          f"({r['time_per_output_token_ms'] / floor_ms:.2f}x); weights {weight_bytes / 1e9:.2f} GB, copy "
          f"{floors['copy_bytes_per_s'] / 1e12:.2f} TB/s; e2e {r['avg_latency_s']:.3f} s, TTFT "
          f"{r['time_to_first_token_s'] * 1e3:.1f} ms, eager={args.enforce_eager}")


if __name__ == "__main__":
    main()
