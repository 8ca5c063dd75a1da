"""`pagedlm bench latency`: end-to-end latency of one batch, and time per output token, with
`vllm bench latency`'s flags, defaults, printed lines and JSON keys."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from pagedlm.benchmarks.datasets import random_requests
from pagedlm.benchmarks.refused import add_refused_flags
from pagedlm.engine_args import EngineArgs

PERCENTILES = (10, 25, 50, 75, 90, 99)


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    EngineArgs.add_cli_args(parser)
    # vLLM's defaults
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n", type=int, default=1, help="sequences generated per prompt")
    parser.add_argument("--use-beam-search", action="store_true", help="LLM.beam_search with beam width --n")
    parser.add_argument("--num-iters-warmup", type=int, default=10)
    parser.add_argument("--num-iters", type=int, default=30)
    parser.add_argument("--disable-detokenize", action="store_true",
                        help="do not detokenize the outputs (leave detokenization out of the measurement)")
    parser.add_argument("--output-json", type=str, default=None)
    add_refused_flags(parser, {"--profile": "profiling through the engine is not implemented"})
    return parser


def measure(llm, batch_size: int, input_len: int, output_len: int, warmup: int, iters: int, n: int = 1,
            use_beam_search: bool = False, detokenize: bool = False) -> dict:
    from pagedlm import SamplingParams
    from pagedlm.sampling_params import BeamSearchParams

    vocab = llm.llm_engine.model_config.vocab_size
    reqs = random_requests(batch_size, input_len, output_len, 0.0, vocab)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]

    def once(max_tokens: int) -> float:
        llm.llm_engine.reset_prefix_cache()  # every run prefills in full (vLLM turns prefix caching off)
        start = time.perf_counter()
        if use_beam_search:
            llm.beam_search(prompts, BeamSearchParams(beam_width=n, max_tokens=max_tokens, ignore_eos=True))
        else:
            params = SamplingParams(n=n, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=max_tokens,
                                    detokenize=detokenize)
            llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - start

    for _ in range(warmup):
        once(output_len)
    e2e = np.array([once(output_len) for _ in range(iters)])
    prefill = np.array([once(1) for _ in range(iters)])
    tpot = (np.median(e2e) - np.median(prefill)) / max(output_len - 1, 1)
    percentiles = {str(p): float(np.percentile(e2e, p)) for p in PERCENTILES}
    return {
        "batch_size": batch_size, "input_len": input_len, "output_len": output_len,
        "avg_latency_s": float(e2e.mean()), "percentiles_s": percentiles,
        "time_to_first_token_s": float(np.median(prefill)), "time_per_output_token_ms": float(tpot * 1e3),
        # vLLM's `bench latency --output-json` keys
        "avg_latency": float(e2e.mean()), "latencies": e2e.tolist(), "percentiles": percentiles,
    }


def main(args: argparse.Namespace) -> dict:
    from pagedlm import LLM

    if args.n < 1:
        raise SystemExit("pagedlm bench latency: error: --n must be at least 1")
    engine_args = EngineArgs.from_cli_args(args)
    if engine_args.model is None:
        from pagedlm.demo import demo_model_dir

        engine_args.model = str(demo_model_dir())
    llm = LLM(**vars(engine_args))
    max_model_len = llm.llm_engine.model_config.max_model_len
    if args.input_len + args.output_len > max_model_len:
        total = args.input_len + args.output_len
        raise SystemExit(f"pagedlm bench latency: error: --input-len + --output-len ({total}) exceeds "
                         f"max_model_len {max_model_len}")
    r = measure(llm, args.batch_size, args.input_len, args.output_len, args.num_iters_warmup, args.num_iters,
                n=args.n, use_beam_search=args.use_beam_search, detokenize=not args.disable_detokenize)
    print(f"Avg latency: {r['avg_latency']} seconds")
    for p, v in r["percentiles"].items():
        print(f"{p}% percentile latency: {v} seconds")
    print(f"Time to first token (median): {r['time_to_first_token_s'] * 1e3:.2f} ms")
    print(f"Time per output token: {r['time_per_output_token_ms']:.3f} ms")
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(r, f, indent=4)
    return r
