"""pagedlm vs the transformers peer on one workload, in one run, on one device; one table.

transformers runs static batches at every size in --hf-batch-size and the ratio is taken
against its best (a size that runs out of memory is reported and skipped). Each value of
--random-range-ratio is one workload (0 = every prompt the same length; 0.5 = lengths drawn
from [0.5, 1.5] x the mean, where static batching pays for padding); both engines run the
same requests of each.

CPU (issue: core engine):
  python benchmarks/compare_throughput.py --shape cpu-small --num-prompts 64 --input-len 128 \
      --output-len 64 --random-range-ratio 0.5 --hf-batch-size 16
GPU (Llama-3.1-8B shape, bf16, random weights; uniform and mixed-length workloads):
  python benchmarks/compare_throughput.py --shape llama-3.1-8b --num-prompts 1000 --input-len 512 \
      --output-len 256 --random-range-ratio 0 0.5 --hf-batch-size 64 128 256 --hf-num-prompts 512
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
    p.add_argument("--random-range-ratio", type=float, nargs="+", default=[0.0],
                   help="one workload per value: prompt/output lengths drawn from [1-r, 1+r] x the mean")
    p.add_argument("--hf-batch-size", type=int, nargs="+", default=[16],
                   help="transformers' static batch sizes to sweep; its best is compared")
    p.add_argument("--hf-num-prompts", type=int, default=None, help="HF on the first N requests only (it is slow)")
    p.add_argument("--max-num-seqs", type=int, default=None, help="default: the engine's (vLLM's defaults)")
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--skip-hf", action="store_true")
    p.add_argument("--output-json", default=None)
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_dir = make_shape_dir(args.shape, tempfile.mkdtemp())
    all_results = []
    for ratio in args.random_range_ratio:
        print(f"\n=== workload: {args.num_prompts} x {args.input_len}/{args.output_len}, random-range-ratio {ratio}")
        all_results.append(run_workload(args, model_dir, ratio, device))
        if args.output_json:  # after every workload: a run cut short keeps what it measured
            with open(args.output_json, "w") as f:
                json.dump(all_results, f, indent=2)


def run_hf_sweep(args: argparse.Namespace, model_dir, requests, device: str) -> list[dict]:
    """transformers at each static batch size; the requests it runs are the first
    --hf-num-prompts (it is slow), so its figures are rates, comparable per token."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hf = load_hf_model(str(model_dir), dtype, device, dummy=True)
    results = []
    for batch_size in args.hf_batch_size:
        try:
            results.append(run_hf(hf, requests[: args.hf_num_prompts or len(requests)], batch_size, device))
            print(f"{results[-1]['engine']}: {results[-1]['output_tokens_per_s']:.1f} out tok/s "
                  f"({results[-1]['elapsed_s']:.1f} s)", flush=True)
        except torch.OutOfMemoryError:
            print(f"transformers static batch {batch_size}: out of memory, skipped")
        if device == "cuda":
            torch.cuda.empty_cache()
    del hf
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return results


def run_workload(args: argparse.Namespace, model_dir, ratio: float, device: str) -> dict:
    vocab = SHAPES[args.shape]["vocab_size"]
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, ratio, vocab)
    hf_results = [] if args.skip_hf else run_hf_sweep(args, model_dir, requests, device)
    engine_args = EngineArgs(model=str(model_dir), load_format="dummy", max_num_seqs=args.max_num_seqs,
                             max_num_batched_tokens=args.max_num_batched_tokens, enforce_eager=args.enforce_eager,
                             max_model_len=max(len(r.prompt_token_ids) + r.output_len for r in requests) + 16)
    ours = run_pagedlm(engine_args, requests)
    results = hf_results + [ours]
    print(json.dumps(results, indent=2))
    print(f"\n{'engine':<42} {'requests':>8} {'req/s':>8} {'out tok/s':>10} {'total tok/s':>11}")
    for r in results:
        print(f"{r['engine']:<42} {r['num_requests']:>8} {r['requests_per_s']:>8.2f} "
              f"{r['output_tokens_per_s']:>10.1f} {r['total_tokens_per_s']:>11.1f}")
    best = max(hf_results, key=lambda r: r["output_tokens_per_s"], default=None)
    if best is not None:
        ratio_best = ours["output_tokens_per_s"] / best["output_tokens_per_s"]
        print(f"pagedlm / transformers at its best ({best['engine']}) output tokens/s: {ratio_best:.2f}x")
    return {"random_range_ratio": ratio, "results": results,
            "best_hf": best["engine"] if best else None}


if __name__ == "__main__":
    main()
