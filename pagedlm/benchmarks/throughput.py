"""`pagedlm bench throughput`: offline throughput on a random or ShareGPT workload, with
`vllm bench throughput`'s flags, printed lines and JSON keys."""

from __future__ import annotations

import argparse
import json
import time

from pagedlm.benchmarks.datasets import (DatasetError, SampleRequest, add_random_dataset_args, check_range_ratio,
                                         random_requests, sharegpt_samples)
from pagedlm.benchmarks.refused import add_refused_flags
from pagedlm.engine_args import EngineArgs

DEFAULT_INPUT_LEN = 512
DEFAULT_OUTPUT_LEN = 128  # vLLM's random dataset's

REFUSED = {
    "--hf-max-batch-size": "the hf backend is not part of pagedlm (benchmarks/compare_throughput.py runs transformers)",
    "--async-engine": "the offline LLM class is measured; use `pagedlm bench serve` for the async engine",
    "--disable-frontend-multiprocessing": "goes with --async-engine, which is not implemented",
    "--lora-path": "random LoRA adapters per request are not implemented here (see benchmarks/gpu_lora.py)",
    "--hf-subset": "Hugging Face datasets are not implemented; use --dataset-name random or sharegpt",
    "--hf-split": "Hugging Face datasets are not implemented; use --dataset-name random or sharegpt",
    "--profile": "profiling through the engine is not implemented",
    "--prefix-repetition-prefix-len": "the prefix_repetition dataset is not implemented; use --prefix-len",
    "--prefix-repetition-suffix-len": "the prefix_repetition dataset is not implemented",
    "--prefix-repetition-num-prefixes": "the prefix_repetition dataset is not implemented",
    "--prefix-repetition-output-len": "the prefix_repetition dataset is not implemented",
}


def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    EngineArgs.add_cli_args(parser)
    parser.add_argument("--backend", choices=["vllm"], default="vllm",
                        help="vLLM's offline engine kind: vllm (the LLM class) is the one pagedlm has")
    parser.add_argument("--dataset-name", choices=["sharegpt", "random"], default="sharegpt",
                        help="sharegpt needs --dataset-path; without a path the random dataset is used (as vLLM)")
    parser.add_argument("--dataset-path", type=str, default=None, help="local ShareGPT JSON file")
    parser.add_argument("--dataset", type=str, default=None, help="vLLM's older spelling of --dataset-path")
    add_random_dataset_args(parser)
    parser.add_argument("--n", type=int, default=1, help="sequences generated per prompt")
    parser.add_argument("--disable-detokenize", action="store_true",
                        help="do not detokenize the outputs (leave detokenization out of the measurement)")
    parser.add_argument("--output-json", type=str, default=None)
    add_refused_flags(parser, REFUSED)
    return parser


def run_pagedlm(engine_args: EngineArgs, requests, use_tqdm: bool = False, n: int = 1,
                detokenize: bool = False) -> dict:
    from pagedlm import LLM

    llm = LLM(**vars(engine_args))
    result = time_generate(llm, requests, use_tqdm, n, detokenize)
    del llm
    return result


def time_generate(llm, requests, use_tqdm: bool = False, n: int = 1, detokenize: bool = False) -> dict:
    """One timed ``llm.generate`` over ``requests`` on an engine already started."""
    from pagedlm import SamplingParams

    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in requests]
    # Fixed output lengths (ignore_eos): the engine is measured, not where a sample happens to stop.
    params = [SamplingParams(n=n, temperature=1.0, top_p=1.0, ignore_eos=True, max_tokens=r.output_len,
                             detokenize=detokenize) for r in requests]
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=use_tqdm)
    elapsed = time.perf_counter() - start
    num_out = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    num_in = sum(len(r.prompt_token_ids) for r in requests)
    stats = llm.llm_engine.get_stats()
    return summarize("pagedlm", len(requests), num_in, num_out, elapsed, preemptions=stats.num_preemptions_total)


def summarize(name: str, num_requests: int, num_in: int, num_out: int, elapsed: float, **extra) -> dict:
    total = num_in + num_out
    return {
        "engine": name, "num_requests": num_requests, "elapsed_s": elapsed,
        "requests_per_s": num_requests / elapsed, "total_tokens_per_s": total / elapsed,
        "output_tokens_per_s": num_out / elapsed, "input_tokens": num_in, "output_tokens": num_out,
        # vLLM's `bench throughput --output-json` keys
        "elapsed_time": elapsed, "total_num_tokens": total, "requests_per_second": num_requests / elapsed,
        "tokens_per_second": total / elapsed, **extra,
    }


def print_result(r: dict) -> None:
    print(f"Throughput: {r['requests_per_s']:.2f} requests/s, {r['total_tokens_per_s']:.2f} total tokens/s, "
          f"{r['output_tokens_per_s']:.2f} output tokens/s")
    print(f"Total num prompt tokens:  {r['input_tokens']}")
    print(f"Total num output tokens:  {r['output_tokens']}")


def get_requests(args: argparse.Namespace, engine_args: EngineArgs) -> list[SampleRequest]:
    """vLLM's choice: ShareGPT when a dataset path is given, else the random dataset."""
    path = args.dataset_path or args.dataset
    if args.dataset and args.dataset_path and args.dataset != args.dataset_path:
        raise DatasetError("--dataset and --dataset-path name two files; give one (--dataset-path)")
    seed = args.dataset_seed if args.dataset_seed is not None else (engine_args.seed or 0)
    # Through the engine config, so a Hub id or .gguf file resolves as the engine will see it.
    model_config = engine_args.create_engine_config().model_config
    if args.dataset_name == "random" or path is None:
        if path is not None:
            raise DatasetError(f"--dataset-name random makes its prompts: drop --dataset-path {path} "
                               "(or use --dataset-name sharegpt)")
        check_range_ratio(args.random_range_ratio)
        return random_requests(args.num_prompts, args.input_len or DEFAULT_INPUT_LEN,
                               args.output_len or DEFAULT_OUTPUT_LEN, args.random_range_ratio,
                               model_config.vocab_size, seed, args.prefix_len)
    for flag, value, default in (("--input-len", args.input_len, None), ("--prefix-len", args.prefix_len, 0),
                                 ("--random-range-ratio", args.random_range_ratio, 0.0)):
        if value != default:
            raise DatasetError(f"{flag} shapes the random dataset; ShareGPT prompts keep their own lengths "
                               "(--output-len sets the output length)")
    from pagedlm.engine.input_processor import load_tokenizer

    samples = sharegpt_samples(path, load_tokenizer(model_config), args.num_prompts, args.output_len, seed)
    return [SampleRequest(s.prompt_token_ids, s.output_len) for s in samples]


def main(args: argparse.Namespace) -> dict:
    engine_args = EngineArgs.from_cli_args(args)
    if engine_args.model is None:
        from pagedlm.demo import demo_model_dir

        engine_args.model = str(demo_model_dir())
    if args.n < 1:
        raise SystemExit("pagedlm bench throughput: error: --n must be at least 1")
    try:
        requests = get_requests(args, engine_args)
    except DatasetError as e:
        raise SystemExit(f"pagedlm bench throughput: error: {e}") from None
    result = run_pagedlm(engine_args, requests, use_tqdm=True, n=args.n, detokenize=not args.disable_detokenize)
    print_result(result)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(result, f, indent=4)
    return result
