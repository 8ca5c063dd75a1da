"""``bench serve``'s workload: the prompts (vLLM's random and ShareGPT datasets) and when each
request is sent (Poisson / gamma arrivals, optionally ramping the rate up)."""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pagedlm.benchmarks.datasets import DatasetError, check_range_ratio, sharegpt_samples

_WORDS = ("the of and to in is was for on that with as by at from his her an which were are this be or "
          "time year people way day man thing woman life child world school state family student group "
          "country problem hand part place case week company system program question work government "
          "number night point home water room mother area money story fact month lot right study book").split()


@dataclass
class Prompt:
    prompt: str | list[int]
    prompt_len: int  # 0 when unknown (text without a tokenizer): the usage field tells
    output_len: int


def _lengths(mean: int, ratio: float, n: int, rng: random.Random, minimum: int) -> list[int]:
    """vLLM's bounds: [floor(mean * (1 - r)), ceil(mean * (1 + r))], at least ``minimum``."""
    low = max(minimum, math.floor(mean * (1 - ratio)))
    high = max(low, math.ceil(mean * (1 + ratio)))
    return [rng.randint(low, high) for _ in range(n)]


def random_prompts(args: argparse.Namespace, tokenizer: Any | None) -> list[Prompt]:
    """``--random-prefix-len`` tokens shared by every prompt, then ``--random-input-len`` (+- the
    ratio) random ones: token ids of exact length with a tokenizer, else random words."""
    check_range_ratio(args.random_range_ratio)
    if args.random_prefix_len < 0 or args.random_prefix_len + math.floor(
            args.random_input_len * (1 - args.random_range_ratio)) < 1:
        raise DatasetError("--random-input-len (with --random-prefix-len and --random-range-ratio) must give "
                           "prompts of at least one token")
    rng = random.Random(args.seed)
    input_lens = _lengths(args.random_input_len, args.random_range_ratio, args.num_prompts, rng, 0)
    output_lens = _lengths(args.random_output_len, args.random_range_ratio, args.num_prompts, rng, 1)
    if tokenizer is not None:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        vocab = [i for i in range(len(tokenizer)) if i not in special]
        prefix = [rng.choice(vocab) for _ in range(args.random_prefix_len)]
        return [Prompt(prefix + [rng.choice(vocab) for _ in range(n_in)], len(prefix) + n_in, n_out)
                for n_in, n_out in zip(input_lens, output_lens)]
    prefix = [rng.choice(_WORDS) for _ in range(args.random_prefix_len)]
    return [Prompt(" ".join(prefix + [rng.choice(_WORDS) for _ in range(n_in)]), 0, n_out)
            for n_in, n_out in zip(input_lens, output_lens)]


def build_prompts(args: argparse.Namespace, tokenizer: Any | None) -> list[Prompt]:
    if args.dataset_name == "random":
        return random_prompts(args, tokenizer)
    if tokenizer is None:
        raise DatasetError("--dataset-name sharegpt counts prompt and output tokens with the model's tokenizer: "
                           "pass --tokenizer (a local directory or a cached Hub id)")
    samples = sharegpt_samples(args.dataset_path, tokenizer, args.num_prompts, args.sharegpt_output_len,
                               args.seed, shuffle=not args.disable_shuffle, oversample=not args.no_oversample)
    return [Prompt(s.prompt, len(s.prompt_token_ids), s.output_len) for s in samples]


def load_tokenizer(path: str | None, mode: str = "auto", trust_remote_code: bool = False,
                   required: bool = False) -> Any | None:
    """The tokenizer at ``path`` (a directory, or a Hub id already in the local cache).
    ``required`` (it was named with --tokenizer): failing is an error, not a fall-back."""
    if not path or (not required and not Path(path).is_dir()):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, use_fast=mode != "slow", trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        if required:
            raise DatasetError(f"could not load the tokenizer --tokenizer {path}: {e}") from None
        print(f"Could not load a tokenizer from {path} ({e}); using random words.", file=sys.stderr)
        return None


def ramp_rate(args: argparse.Namespace, index: int, total: int) -> float:
    if args.ramp_up_strategy is None:
        return args.request_rate
    progress = index / max(total - 1, 1)
    start, end = args.ramp_up_start_rps, args.ramp_up_end_rps
    if args.ramp_up_strategy == "linear":
        return start + (end - start) * progress
    return start * (end / start) ** progress


def send_offsets(args: argparse.Namespace, total: int, rng: random.Random) -> tuple[list[float], list[float]]:
    """(seconds after the start at which each request is sent, the rate in force then), as vLLM
    draws them: gamma intervals with mean 1/rate (exponential: Poisson; burstiness inf: even),
    rescaled at a fixed rate so that the last one lands at total/rate whatever the seed."""
    rates = [ramp_rate(args, i, total) for i in range(total)]
    delays = []
    for rate in rates:
        if math.isinf(rate):
            delays.append(0.0)
        elif math.isinf(args.burstiness):
            delays.append(1.0 / rate)
        else:
            delays.append(rng.gammavariate(args.burstiness, 1.0 / (rate * args.burstiness)))
    offsets = list(itertools.accumulate(delays))
    if args.ramp_up_strategy is None and offsets and offsets[-1] > 0:
        scale = total / args.request_rate / offsets[-1]
        offsets = [t * scale for t in offsets]
    return offsets, rates
