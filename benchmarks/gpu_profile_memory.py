"""What the start-up profile run charges to "peak activations": the allocations live at its
peak, grouped by the pagedlm frames that made them (torch.cuda.memory's allocation history).
The KV cache gets what the profile leaves (``pagedlm/worker/memory.gpu_num_blocks``), so a
large scratch buffer here costs KV blocks; this is how the 16 GiB of split-decode partial sums
were found (BENCHMARKS.md, session 37).

Run on the GPU machine from the repo root (the engine starts eagerly, without the warm-up):
    PAGEDLM_WARM_UP=0 PYTHONPATH=. python3 benchmarks/gpu_profile_memory.py [--shape llama-3.1-8b]
        [--max-num-batched-tokens N]
"""

from __future__ import annotations

import argparse
import collections
import tempfile

import torch

from pagedlm.benchmarks.shapes import SHAPES, make_shape_dir
from pagedlm.worker import model_runner


def live_at_peak(snapshot: dict) -> list[dict]:
    """The allocation events still live at the moment the allocated total peaked."""
    live: dict[int, dict] = {}
    current = peak = 0
    at_peak: list[dict] = []
    for event in snapshot["device_traces"][0]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
            current += event["size"]
            if current > peak:
                peak, at_peak = current, list(live.values())
        elif event["action"] == "free_completed" and event["addr"] in live:
            current -= live.pop(event["addr"])["size"]
    return at_peak


def report(events: list[dict], top: int = 12) -> None:
    sizes: collections.Counter = collections.Counter()
    counts: collections.Counter = collections.Counter()
    for event in events:
        frames = [f for f in event.get("frames", []) if "pagedlm" in f["filename"]][:3]
        where = " <- ".join(f"{f['filename'].split('pagedlm/')[-1]}:{f['line']} {f['name']}" for f in frames)
        sizes[where] += event["size"]
        counts[where] += 1
    print(f"live at the profile's peak: {sum(sizes.values()) / 2**30:.2f} GiB")
    print("| GiB | allocations | made at (innermost pagedlm frames) |\n|---|---|---|")
    for where, size in sizes.most_common(top):
        print(f"| {size / 2**30:.3f} | {counts[where]} | {where or '(outside pagedlm)'} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama-3.1-8b", choices=sorted(SHAPES))
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    args = parser.parse_args()
    profile = model_runner.ModelRunner._profile_run

    def recorded(runner) -> int:
        torch.cuda.memory._record_memory_history(max_entries=200_000)
        scratch = profile(runner)
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        report(live_at_peak(snapshot))
        print(f"the profile's scratch KV cache (not counted as activations): {scratch / 2**30:.2f} GiB")
        return scratch

    model_runner.ModelRunner._profile_run = recorded
    from pagedlm import LLM

    extra = {} if args.max_num_batched_tokens is None else {"max_num_batched_tokens": args.max_num_batched_tokens}
    LLM(str(make_shape_dir(args.shape, tempfile.mkdtemp())), load_format="dummy", enforce_eager=True, **extra)


if __name__ == "__main__":
    main()
