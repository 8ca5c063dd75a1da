"""Where a batch-1 prefill's time goes: the top CUDA kernels and the wall time of
`generate(max_tokens=1)` on the Llama-3.1-8B shape (dummy weights).

python3 benchmarks/prefill_profile.py [--input-len 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pagedlm import LLM, SamplingParams
from pagedlm.benchmarks.shapes import make_shape_dir


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama-3.1-8b")
    p.add_argument("--input-len", type=int, default=512)
    args = p.parse_args()
    llm = LLM(str(make_shape_dir(args.shape, tempfile.mkdtemp())), load_format="dummy", max_model_len=1024,
              max_num_seqs=8)
    prompt = [{"prompt_token_ids": list(range(1000, 1000 + args.input_len))}]
    params = SamplingParams(max_tokens=1, temperature=1.0, ignore_eos=True, detokenize=False)

    def once() -> float:
        llm.llm_engine.reset_prefix_cache()
        start = time.perf_counter()
        llm.generate(prompt, params, use_tqdm=False)
        return time.perf_counter() - start

    for _ in range(3):
        once()
    walls = sorted(once() for _ in range(5))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        once()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
    print(f"prefill wall median {walls[2] * 1e3:.1f} ms (min {walls[0] * 1e3:.1f})")


if __name__ == "__main__":
    main()
