"""Workloads shared by the benchmarks: random token-id prompts of set lengths, and ShareGPT
conversations read from a local JSON file (vLLM's ``--dataset-name sharegpt --dataset-path``).

No torch here: ``bench serve`` imports this module too."""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A dataset the flags name that cannot be used; the message says what to change."""


@dataclass
class SampleRequest:
    prompt_token_ids: list[int]
    output_len: int


@dataclass
class TextSample:
    """One ShareGPT request: the first human turn, its ids (with the tokenizer's special
    tokens, as the server would count them) and the output length to ask for."""

    prompt: str
    prompt_token_ids: list[int]
    output_len: int


def add_random_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-len", type=int, default=None,
                        help="prompt tokens per request (random dataset; default 512)")
    parser.add_argument("--output-len", type=int, default=None,
                        help="output tokens per request (default 128 for random; overrides ShareGPT's lengths)")
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--random-range-ratio", type=float, default=0.0,
                        help="lengths drawn uniformly from [len*(1-r), len*(1+r)], r in [0, 1)")
    parser.add_argument("--prefix-len", type=int, default=0,
                        help="fixed random prefix tokens before each random prompt (random dataset)")
    parser.add_argument("--dataset-seed", type=int, default=None, help="dataset seed (default: --seed, else 0)")


def check_range_ratio(ratio: float, flag: str = "--random-range-ratio") -> None:
    if not 0.0 <= ratio < 1.0:
        raise DatasetError(f"{flag} must be in [0, 1) (lengths are drawn from [len*(1-r), len*(1+r)]), got {ratio}")


def random_requests(num: int, input_len: int, output_len: int, range_ratio: float, vocab_size: int,
                    seed: int = 0, prefix_len: int = 0) -> list[SampleRequest]:
    """``prefix_len`` random ids shared by every prompt, then ``input_len`` (+- the ratio) more."""
    rng = random.Random(seed)

    def draw(n: int) -> int:
        return max(1, rng.randint(int(n * (1 - range_ratio)), int(n * (1 + range_ratio))))

    # Ids from the middle of the vocabulary: away from special tokens at either end.
    low, high = min(10, vocab_size - 1), max(11, vocab_size - 10)
    prefix = [rng.randrange(low, high) for _ in range(prefix_len)]
    return [
        SampleRequest(prefix + [rng.randrange(low, high) for _ in range(draw(input_len))], draw(output_len))
        for _ in range(num)
    ]


def is_valid_sequence(prompt_len: int, output_len: int, min_len: int = 4, max_prompt_len: int = 1024,
                      max_total_len: int = 2048, skip_min_output_len_check: bool = False) -> bool:
    """vLLM's ShareGPT filter: prompts of 4..1024 tokens, outputs of at least 4 (unless the
    output length is set), prompt + output at most 2048."""
    return not (prompt_len < min_len or (not skip_min_output_len_check and output_len < min_len)
                or prompt_len > max_prompt_len or prompt_len + output_len > max_total_len)


def load_sharegpt(path: str | None) -> list[dict[str, Any]]:
    """The entries of a ShareGPT JSON file (a list of {"conversations": [{"value": ...}, ...]})
    with at least two turns."""
    if not path:
        raise DatasetError("--dataset-name sharegpt reads a local JSON file: pass --dataset-path FILE.json "
                           "(e.g. ShareGPT_V3_unfiltered_cleaned_split.json); nothing is downloaded")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise DatasetError(f"cannot read the ShareGPT file --dataset-path {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise DatasetError(f"--dataset-path {path} is not JSON: {e}") from None
    if not isinstance(data, list):
        raise DatasetError(f"--dataset-path {path}: a ShareGPT file is a JSON list of "
                           "{\"conversations\": [{\"from\": ..., \"value\": ...}, ...]} entries")
    return [e for e in data if isinstance(e, dict) and len(e.get("conversations") or []) >= 2]


def sharegpt_samples(path: str | None, tokenizer: Any, num_requests: int, output_len: int | None = None,
                     seed: int = 0, shuffle: bool = True, oversample: bool = True) -> list[TextSample]:
    """vLLM's ShareGPT sampling: shuffle with the seed, keep the first turn of each
    conversation as the prompt and the second's token count as the output length (or
    ``output_len``), skip pairs outside the length filter, and repeat random samples up to
    ``num_requests`` (unless ``oversample`` is off)."""
    data = load_sharegpt(path)
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(data)
    samples: list[TextSample] = []
    for entry in data:
        if len(samples) >= num_requests:
            break
        prompt, completion = (str(turn.get("value", "")) for turn in entry["conversations"][:2])
        prompt_ids = list(tokenizer(prompt).input_ids)
        new_output_len = len(tokenizer(completion).input_ids) if output_len is None else output_len
        if is_valid_sequence(len(prompt_ids), new_output_len, skip_min_output_len_check=output_len is not None):
            samples.append(TextSample(prompt, prompt_ids, new_output_len))
    if not samples:
        raise DatasetError(f"no conversation in {path} passes the ShareGPT length filter (prompt of 4 to 1024 "
                           "tokens, output of at least 4, at most 2048 in all)")
    if oversample:
        samples += [rng.choice(samples) for _ in range(num_requests - len(samples))]
    return samples
