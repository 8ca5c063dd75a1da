"""`pagedlm bench throughput`: offline throughput on a synthetic workload."""

from __future__ import annotations

import argparse
import json
import time

from pagedlm.benchmarks.datasets import add_random_dataset_args, random_requests
from pagedlm.engine_args import EngineArgs


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    EngineArgs.add_cli_args(parser)
    add_random_dataset_args(parser)
    parser.add_argument("--output-json", type=str, default=None)
    return parser


def run_pagedlm(engine_args: EngineArgs, requests, use_tqdm: bool = False) -> dict:
    from pagedlm import LLM, SamplingParams

    llm = LLM(**vars(engine_args))
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    # Fixed output lengths (ignore_eos) and no detokenization: the engine is measured, not the tokenizer.
    params = [SamplingParams(temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=r.output_len, detokenize=False)
              for r in requests]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=use_tqdm)
    elapsed = time.perf_counter() - start
    num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
    num_in = sum(len(r.prompt_token_ids) for r in requests)
    stats = llm.llm_engine.get_stats()
    del llm
    return summarize("pagedlm", len(requests), num_in, num_out, elapsed, preemptions=stats.num_preemptions_total)


def summarize(name: str, num_requests: int, num_in: int, num_out: int, elapsed: float, **extra) -> dict:
    return {
        "engine": name, "num_requests": num_requests, "elapsed_s": elapsed,
        "requests_per_s": num_requests / elapsed, "total_tokens_per_s": (num_in + num_out) / elapsed,
        "output_tokens_per_s": num_out / elapsed, "input_tokens": num_in, "output_tokens": num_out, **extra,
    }


def print_result(r: dict) -> None:
    print(f"Throughput: {r['requests_per_s']:.2f} requests/s, {r['total_tokens_per_s']:.2f} total tokens/s, "
          f"{r['output_tokens_per_s']:.2f} output tokens/s")


def main(args: argparse.Namespace) -> dict:
    engine_args = EngineArgs.from_cli_args(args)
    if engine_args.model is None:
        from pagedlm.demo import demo_model_dir

        engine_args.model = str(demo_model_dir())
    # Through the engine config, so a Hub id or .gguf file resolves as the engine will see it.
    vocab = engine_args.create_engine_config().model_config.vocab_size
    requests = random_requests(args.num_prompts, args.input_len, args.output_len, args.random_range_ratio, vocab,
                               args.dataset_seed)
    result = run_pagedlm(engine_args, requests, use_tqdm=True)
    print_result(result)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=2)
    return result
