"""Where a decode step's time goes: device kernel time vs gaps (the device idle, waiting on
the host), per step, over N decode steps of a full batch (default: 256 requests, the
Llama-3.1-8B shape, bf16, dummy weights, a fixed KV block count).

  python benchmarks/gpu_step_profile.py [--batch-size 256 --steps 20 --input-len 512] [--enforce-eager]
      [--phase decode|prefill] [--format bf16|fp8|int8|awq|...]

Prints, per step: wall time, kernel time (the union of kernel intervals on the device
timeline), gaps = wall - kernel, kernels launched; the kernel time by kind (GEMM, attention,
norms, ...); then the top kernels. `--phase prefill` profiles the first steps after the batch
is added instead (prefill chunks of --max-num-batched-tokens, decodes riding along). Run with
PAGEDLM_PDL=0 for per-kernel times: with programmatic dependent launch a kernel's interval
starts while the one ahead still runs. `--format` loads the shape in one of
`benchmarks/gpu_quant.py`'s quantized formats (dummy weights; run from the repo root with it on
PYTHONPATH). Runs on CPU too (--shape cpu-small) as a smoke test, where only wall time is
reported.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import tempfile
import time
from pathlib import Path

import torch

from pagedlm import LLM, SamplingParams
from pagedlm.benchmarks.datasets import random_requests
from pagedlm.benchmarks.shapes import SHAPES, make_shape_dir
from pagedlm.sampling_params import RequestOutputKind


def kernel_intervals(prof: torch.profiler.profile) -> list[tuple[float, float]]:
    """[start, end) in microseconds of every device kernel the profiler saw."""
    out = []
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start:
            out.append((e.time_range.start, e.time_range.end))
    return sorted(out)


def union_us(intervals: list[tuple[float, float]]) -> float:
    busy, cur_start, cur_end = 0.0, None, None
    for start, end in intervals:
        if cur_end is None or start > cur_end:
            if cur_end is not None:
                busy += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return busy + (cur_end - cur_start if cur_end is not None else 0.0)


# Kernel kinds by name, first match wins (cuBLAS's Hopper GEMMs are the nvjet / sm90 kernels).
KINDS = [
    ("attention", r"attention|combine_segments|flash|fmha"),
    ("GEMM / GEMV", r"nvjet|gemm|gemv|cutlass|sm90_|sm80_|splitk|_scaled_mm|wna16|w4a16"),
    ("norm", r"rms_norm"),
    ("SiLU-mul", r"silu"),
    ("RoPE + KV write", r"rope|kv_write|reshape_and_cache"),
    ("quantize", r"quant"),
    ("copies", r"Memcpy|Memset|copy"),
]


def kind_of(name: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other (sampling, embedding, step prep)"


def kernel_time_by_kind(prof: torch.profiler.profile) -> dict[str, float]:
    """Summed device time in microseconds of the kernels of each kind."""
    out: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start:
            kind = kind_of(e.name)
            out[kind] = out.get(kind, 0.0) + e.time_range.end - e.time_range.start
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def add_batch(llm: LLM, args: argparse.Namespace) -> None:
    engine = llm.llm_engine
    vocab = SHAPES[args.shape]["vocab_size"]
    reqs = random_requests(args.batch_size, args.input_len, 1, 0.0, vocab, seed=1)
    # Final outputs only, as LLM.generate asks for them (no per-step RequestOutput objects).
    params = SamplingParams(temperature=1.0, ignore_eos=True, max_tokens=args.steps * 4 + 64, detokenize=False,
                            output_kind=RequestOutputKind.FINAL_ONLY)
    for i, r in enumerate(reqs):
        engine.add_request(str(i), {"prompt_token_ids": r.prompt_token_ids}, params)


def fill_batch(llm: LLM, args: argparse.Namespace) -> None:
    """Add the requests and step until every one has left prefill (all decode from here)."""
    engine = llm.llm_engine
    add_batch(llm, args)
    prefill_steps = -(-args.batch_size * args.input_len // args.max_num_batched_tokens)
    for _ in range(prefill_steps + 8):  # prefill chunks, then a few decode steps (graphs warm)
        engine.step()


@contextlib.contextmanager
def host_split(llm: LLM):
    """Seconds spent in each host stage of a step (in-process engine core), accumulated into
    the yielded dict while the context is open; 'waiting for the device' is the time the host
    blocks on a step's sampled ids (large: the device is the bottleneck)."""
    core = llm.llm_engine.engine_core
    runner = core.runner
    spent: dict[str, float] = collections.defaultdict(float)
    patched = [(core.scheduler, "schedule", "schedule"),
               (core.scheduler, "update_from_output", "scheduler bookkeeping of the outputs"),
               (llm.llm_engine.output_processor, "process_outputs", "output processor"),
               (runner, "launch", "runner: step inputs and launch"),
               (runner, "take_output", "runner: collect the sampled ids"),
               (torch.cuda.Event, "synchronize", "  of which waiting for the device")]
    originals = [(obj, name, getattr(obj, name)) for obj, name, _ in patched]

    def timed(fn, label):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += time.perf_counter() - start
        return wrapper

    for (obj, name, label), (_, _, fn) in zip(patched, originals):
        setattr(obj, name, timed(fn, label))
    try:
        yield spent
    finally:
        for obj, name, fn in originals:
            if obj is torch.cuda.Event:
                setattr(obj, name, fn)
            else:
                delattr(obj, name)  # back to the class's method


def timed_steps(llm: LLM, steps: int, on_cuda: bool) -> float:
    """Microseconds of wall time for ``steps`` engine steps, the device drained at both ends."""
    if on_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        llm.llm_engine.step()
    if on_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e6


def build_llm(args: argparse.Namespace) -> LLM:
    """The shape in bf16 or one of gpu_quant.py's formats, dummy weights, KV blocks for the batch."""
    max_len = args.input_len + args.steps * 4 + 128
    block_size = 16
    quantization = None
    if args.format == "bf16":
        model_dir = make_shape_dir(args.shape, tempfile.mkdtemp())
    else:
        from benchmarks.gpu_quant import FORMATS, format_dir

        if args.format not in FORMATS:
            raise SystemExit(f"unknown format {args.format!r}; choose from {sorted(FORMATS)}")
        model_dir = format_dir(args.shape, args.format, Path(tempfile.mkdtemp()))
        if model_dir is None:
            raise SystemExit(f"format {args.format!r} is not available in this build")
        quantization = FORMATS[args.format][1]
    return LLM(str(model_dir), load_format="dummy", max_model_len=max_len, quantization=quantization,
              max_num_seqs=args.batch_size, max_num_batched_tokens=args.max_num_batched_tokens,
              enforce_eager=args.enforce_eager, block_size=block_size,
              num_gpu_blocks_override=args.batch_size * (-(-max_len // block_size)) + 64)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=sorted(SHAPES), default="llama-3.1-8b")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--max-num-batched-tokens", type=int, default=8192)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--phase", choices=("decode", "prefill"), default="decode")
    p.add_argument("--format", default="bf16", help="bf16, or a quantized format of benchmarks/gpu_quant.py")
    args = p.parse_args()
    on_cuda = torch.cuda.is_available()
    llm = build_llm(args)
    if args.phase == "decode":
        fill_batch(llm, args)
    else:
        add_batch(llm, args)
    # Decode: the wall time from steps run without the profiler (its host overhead would widen
    # the gaps), the kernels from the next as many steps under it. Prefill steps are too few to
    # spend on a second window and long enough that the profiler's host cost does not show.
    wall_us = timed_steps(llm, args.steps, on_cuda) if args.phase == "decode" else None
    if args.phase == "decode" and llm.llm_engine.engine_core is not None:
        with host_split(llm) as spent:  # a third window: where the host's time goes
            split_us = timed_steps(llm, args.steps, on_cuda)
        print(f"host, per decode step ({split_us / args.steps / 1e3:.2f} ms wall):")
        for label, sec in spent.items():
            print(f"  {label:<40} {sec / args.steps * 1e3:8.3f} ms")
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        profiled_us = timed_steps(llm, args.steps, on_cuda)
    wall_us = profiled_us if wall_us is None else wall_us
    intervals = kernel_intervals(prof) if on_cuda else []
    busy_us = union_us(intervals)
    n = args.steps
    print(f"{args.steps} {args.phase} steps at batch {args.batch_size}, {args.shape} {args.format}, "
          f"eager={args.enforce_eager}, "
          f"{args.max_num_batched_tokens} batched tokens")
    if on_cuda:
        print(f"per step: wall {wall_us / n / 1e3:.2f} ms, kernels {busy_us / n / 1e3:.2f} ms, "
              f"gaps {(wall_us - busy_us) / n / 1e3:.2f} ms ({1 - busy_us / wall_us:.0%} of the step idle), "
              f"{len(intervals) / n:.0f} kernels")
        for kind, us in kernel_time_by_kind(prof).items():
            print(f"  {kind:<40} {us / n / 1e3:8.3f} ms per step")
    else:
        print(f"per step: wall {wall_us / n / 1e3:.2f} ms (no device timeline on CPU)")
    sort_key = "device_time_total" if on_cuda else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_key, row_limit=15, max_name_column_width=60))
    llm.llm_engine.abort_request([str(i) for i in range(args.batch_size)])


if __name__ == "__main__":
    main()
