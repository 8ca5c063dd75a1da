"""Synthetic workloads shared by the benchmarks: random token-id prompts of set lengths."""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass


@dataclass
class SampleRequest:
    prompt_token_ids: list[int]
    output_len: int


def add_random_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--random-range-ratio", type=float, default=0.0,
                        help="lengths drawn uniformly from [len*(1-r), len*(1+r)]")
    parser.add_argument("--dataset-seed", type=int, default=0)


def random_requests(num: int, input_len: int, output_len: int, range_ratio: float, vocab_size: int,
                    seed: int = 0) -> list[SampleRequest]:
    rng = random.Random(seed)

    def draw(n: int) -> int:
        return max(1, rng.randint(int(n * (1 - range_ratio)), int(n * (1 + range_ratio))))

    # Ids from the middle of the vocabulary: away from special tokens at either end.
    low, high = min(10, vocab_size - 1), max(11, vocab_size - 10)
    return [
        SampleRequest([rng.randrange(low, high) for _ in range(draw(input_len))], draw(output_len))
        for _ in range(num)
    ]
