"""pagedlm vs the transformers peer on one workload, in one run, on one device; one table.

CPU (issue: core engine):
  python benchmarks/compare_throughput.py --shape cpu-small --num-prompts 64 --input-len 128 \
      --output-len 64 --random-range-ratio 0.5 --hf-batch-size 16
GPU (Llama-3.1-8B shape, bf16, random weights):
  python benchmarks/compare_throughput.py --shape llama-3.1-8b --num-prompts 1000 --input-len 512 \
      --output-len 256 --hf-batch-size 64 --hf-num-prompts 128
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile

import torch

from pagedlm.benchmarks.datasets import random_requests
from pagedlm.benchmarks.hf_peer import load_hf_model, run_hf
from pagedlm.benchmarks.shapes import SHAPES, make_shape_dir
from pagedlm.benchmarks.throughput import run_pagedlm
from pagedlm.engine_args import EngineArgs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument("--hf-batch-size", type=int, default=16)
    p.add_argument("--hf-num-prompts", type=int, default=None, help="HF on the first N requests only (it is slow)")
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = make_shape_dir(args.shape, tempfile.mkdtemp())
    vocab = SHAPES[args.shape]["vocab_size"]
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, args.random_range_ratio, vocab)
    results = []
    if not args.skip_hf:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        hf = load_hf_model(str(model_dir), dtype, device, dummy=True)
        results.append(run_hf(hf, requests[: args.hf_num_prompts or len(requests)], args.hf_batch_size, device))
        del hf
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    engine_args = EngineArgs(model=str(model_dir), load_format="dummy", max_num_seqs=args.max_num_seqs,
                             max_num_batched_tokens=args.max_num_batched_tokens, enforce_eager=args.enforce_eager,
                             max_model_len=max(len(r.prompt_token_ids) + r.output_len for r in requests) + 16)
    results.append(run_pagedlm(engine_args, requests))
    print(json.dumps(results, indent=2))
    print(f"\n{'engine':<42} {'requests':>8} {'req/s':>8} {'out tok/s':>10} {'total tok/s':>11}")
    for r in results:
        print(f"{r['engine']:<42} {r['num_requests']:>8} {r['requests_per_s']:>8.2f} "
              f"{r['output_tokens_per_s']:>10.1f} {r['total_tokens_per_s']:>11.1f}")
    if len(results) == 2:
        print(f"pagedlm / transformers output tokens/s: "
              f"{results[1]['output_tokens_per_s'] / results[0]['output_tokens_per_s']:.2f}x")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
