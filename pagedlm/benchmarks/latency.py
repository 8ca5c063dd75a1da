"""`pagedlm bench latency`: end-to-end latency of one batch, and time per output token."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pagedlm.benchmarks.datasets import random_requests
from pagedlm.engine_args import EngineArgs


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    EngineArgs.add_cli_args(parser)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--num-iters-warmup", type=int, default=2)
    parser.add_argument("--num-iters", type=int, default=5)
    parser.add_argument("--output-json", type=str, default=None)
    return parser


def measure(llm, batch_size: int, input_len: int, output_len: int, warmup: int, iters: int) -> dict:
    from pagedlm import SamplingParams

    vocab = llm.llm_engine.model_config.vocab_size
    reqs = random_requests(batch_size, input_len, output_len, 0.0, vocab)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]

    def once(max_tokens: int) -> float:
        params = SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=max_tokens, detokenize=False)
        llm.llm_engine.reset_prefix_cache()
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start

    for _ in range(warmup):
        once(output_len)
    e2e = np.array([once(output_len) for _ in range(iters)])
    prefill = np.array([once(1) for _ in range(iters)])
    tpot = (np.median(e2e) - np.median(prefill)) / max(output_len - 1, 1)
    return {
        "batch_size": batch_size, "input_len": input_len, "output_len": output_len,
        "avg_latency_s": float(e2e.mean()),
        "percentiles_s": {str(p): float(np.percentile(e2e, p)) for p in (10, 25, 50, 75, 90, 99)},
        "time_to_first_token_s": float(np.median(prefill)), "time_per_output_token_ms": float(tpot * 1e3),
    }


def main(args: argparse.Namespace) -> dict:
    from pagedlm import LLM

    engine_args = EngineArgs.from_cli_args(args)
    if engine_args.model is None:
        from pagedlm.demo import demo_model_dir

        engine_args.model = str(demo_model_dir())
    llm = LLM(**vars(engine_args))
    r = measure(llm, args.batch_size, args.input_len, args.output_len, args.num_iters_warmup, args.num_iters)
    print(f"Avg latency: {r['avg_latency_s']:.4f} s")
    for p, v in r["percentiles_s"].items():
        print(f"{p}% percentile latency: {v:.4f} s")
    print(f"Time to first token (median): {r['time_to_first_token_s'] * 1e3:.2f} ms")
    print(f"Time per output token: {r['time_per_output_token_ms']:.3f} ms")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(r, f, indent=2)
    return r
