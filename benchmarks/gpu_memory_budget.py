"""Does the engine stay inside --gpu-memory-utilization? Start an engine on a shape's dummy
weights, then run the steps that hold the most memory besides the forward and report the
card's peak use against the fraction asked for:

- ``sampling``: max_num_seqs requests sampled with every costly processor at once
  (penalties, min-p, top-k + top-p, 20 logprobs), so each decode step samples
  [max_num_seqs, vocab] rows eagerly;
- ``prompt-logprobs``: one prompt of ``--long-prompt`` tokens with prompt logprobs, prefilled
  in max_num_batched_tokens chunks.

The peak is torch's peak reserved memory plus what the process holds outside torch's
allocator (the CUDA context, cuBLAS / NCCL workspaces: the card's use minus torch's reserved
memory once the engine is up). A phase that runs out of memory is reported as such.

Run on the GPU machine from the repo root (an in-process engine core, as ``LLM`` starts it):
    PYTHONPATH=. python3 benchmarks/gpu_memory_budget.py [--shape llama-3.1-8b]
        [--gpu-memory-utilization 0.9] [--long-prompt 16000]
        [--draft-shape llama-3.2-1b | --ngram] [--num-speculative-tokens 3]
        [--disable-by-batch-size N|none] [--skip-phases]
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import time

import torch

from pagedlm.benchmarks.graph_memory import watch_graph_capture
from pagedlm.benchmarks.shapes import SHAPES, make_shape_dir


def used() -> int:
    free, total = torch.cuda.mem_get_info()
    return total - free


def run_phase(name: str, fn, outside: int, total: int, target: float) -> dict:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # each phase's own peak, not what the last one left cached
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    try:
        fn()
        status = "ok"
    except torch.OutOfMemoryError:
        status = "out of memory"
    except Exception as e:  # noqa: BLE001 - the engine may wrap it
        status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_reserved() + outside
    row = {"phase": name, "status": status, "seconds": time.perf_counter() - start,
           "peak_gib": peak / 2**30, "peak_fraction": peak / total, "target": target,
           "allocated_gib": (torch.cuda.max_memory_allocated() - base) / 2**30}
    print(f"| {name} | {status} | {row['seconds']:.1f} | {row['allocated_gib']:.2f} | {row['peak_gib']:.2f} "
          f"| {row['peak_fraction']:.3f} | {target} |", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--long-prompt", type=int, default=16000)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--draft-shape", choices=sorted(SHAPES), default=None,
                        help="speculative decoding with a draft model of this shape (dummy weights)")
    parser.add_argument("--ngram", action="store_true", help="speculative decoding with n-gram proposals")
    parser.add_argument("--num-speculative-tokens", type=int, default=3)
    parser.add_argument("--disable-by-batch-size", default=None,
                        help="speculative_config's disable_by_batch_size: an integer, or 'none' for never "
                             "(left out: pagedlm's default)")
    parser.add_argument("--skip-phases", action="store_true", help="report the start-up only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from pagedlm import LLM, SamplingParams

    spec = None
    if args.draft_shape:
        spec = {"method": "draft_model", "model": str(make_shape_dir(args.draft_shape, tempfile.mkdtemp())),
                "num_speculative_tokens": args.num_speculative_tokens}
    elif args.ngram:
        spec = {"method": "ngram", "num_speculative_tokens": args.num_speculative_tokens}
    if spec is not None and args.disable_by_batch_size is not None:
        value = args.disable_by_batch_size.lower()
        spec["disable_by_batch_size"] = None if value == "none" else int(value)
    with watch_graph_capture() as graph_bytes:
        llm = LLM(str(make_shape_dir(args.shape, tempfile.mkdtemp())), load_format="dummy",
                  gpu_memory_utilization=args.gpu_memory_utilization, speculative_config=spec)
    config = llm.llm_engine.config
    sched = config.scheduler_config
    torch.cuda.synchronize()
    total = torch.cuda.mem_get_info()[1]
    after_start = used()
    outside = after_start - torch.cuda.memory_reserved()
    print(f"started: {after_start / 2**30:.2f} GiB of {total / 2**30:.2f} in use ({after_start / total:.3f}); "
          f"outside torch's allocator {outside / 2**30:.2f} GiB; max_num_seqs {sched.max_num_seqs}, "
          f"max_num_batched_tokens {sched.max_num_batched_tokens}; KV blocks "
          f"{llm.llm_engine.engine_core.runner.num_blocks}", flush=True)
    print(f"CUDA graphs: start-up estimate {graph_bytes['estimate'] / 2**30:.3f} GiB, the capture took "
          f"{graph_bytes['captured'] / 2**30:.3f} GiB", flush=True)
    if args.skip_phases:
        return
    vocab = config.model_config.hf_config.vocab_size
    rng = random.Random(0)

    def prompt(n: int) -> dict:
        return {"prompt_token_ids": [rng.randrange(10, vocab - 10) for _ in range(n)]}

    heavy = SamplingParams(temperature=0.8, top_p=0.9, top_k=50, min_p=0.01, presence_penalty=0.1,
                           frequency_penalty=0.1, repetition_penalty=1.1, logprobs=20, max_tokens=args.output_len,
                           ignore_eos=True, detokenize=False)
    long = SamplingParams(max_tokens=1, prompt_logprobs=5, detokenize=False)
    print("| phase | status | s | allocated above the start, peak GiB | card's peak GiB (reserved + outside torch) "
          "| peak / total | gpu_memory_utilization |\n|---|---|---|---|---|---|---|")
    run_phase("sampling", lambda: llm.generate([prompt(args.prompt_len) for _ in range(sched.max_num_seqs)], heavy,
                                               use_tqdm=False), outside, total, args.gpu_memory_utilization)
    run_phase("prompt-logprobs", lambda: llm.generate([prompt(args.long_prompt)], long, use_tqdm=False), outside,
              total, args.gpu_memory_utilization)


if __name__ == "__main__":
    main()
