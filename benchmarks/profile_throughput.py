"""Where a throughput run's time goes: GPU kernel time by kernel vs wall time, and the host's
top functions. python benchmarks/profile_throughput.py [--num-prompts 256 --max-num-seqs 256]"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time

import torch

from pagedlm import LLM, SamplingParams
from pagedlm.benchmarks.datasets import random_requests
from pagedlm.benchmarks.shapes import make_shape_dir


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    args = p.parse_args()
    model_dir = make_shape_dir("llama-3.1-8b", tempfile.mkdtemp())
    llm = LLM(str(model_dir), load_format="dummy", max_model_len=args.input_len + args.output_len + 16,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens)
    reqs = random_requests(args.num_prompts, args.input_len, args.output_len, 0.0, 128256, seed=1)
    prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
    params = SamplingParams(ignore_eos=True, max_tokens=args.output_len, detokenize=False)
    llm.generate(prompts[:16], params, use_tqdm=False)  # warm-up
    llm.llm_engine.reset_prefix_cache()
    prof = cProfile.Profile()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as tp:
        start = time.perf_counter()
        prof.enable()
        llm.generate(prompts, params, use_tqdm=False)
        prof.disable()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = tp.key_averages()
    gpu_total = sum(e.device_time_total for e in events) / 1e6
    print(f"wall {wall:.2f} s, GPU kernel time {gpu_total:.2f} s ({gpu_total / wall:.0%} busy), "
          f"{args.num_prompts * args.output_len / wall:.0f} output tok/s")
    print(events.table(sort_by="device_time_total", row_limit=18, max_name_column_width=70))
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(25)
    print(s.getvalue()[:6000])


if __name__ == "__main__":
    main()
