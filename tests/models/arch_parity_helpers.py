"""Shared pieces of the architecture parity tests (test_parity_archs_*.py): tiny random
checkpoints built once per module by name, and the plain + chunked-prefill comparison with
transformers."""

from __future__ import annotations

from typing import Callable

from models.test_parity import PROMPTS, check_close, hf_reference, run


def checkpoint_getter(tmp_path_factory, checkpoints: dict[str, tuple[str, dict]], seed_base: int
                      ) -> Callable[[str], str]:
    """name -> the path of its tiny checkpoint (``checkpoints[name]`` = (architecture, config
    overrides)), built on first use with its own seed."""
    from pagedlm.demo import build_tiny_checkpoint

    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            arch, overrides = checkpoints[name]
            path = tmp_path_factory.mktemp(name)
            build_tiny_checkpoint(path, arch, seed=seed_base + len(built), **overrides)
            built[name] = str(path)
        return built[name]

    return get


def check_plain_and_chunked(path: str) -> None:
    """Greedy ids and logprobs equal transformers', plainly and with the 41- and 70-token prompts
    arriving in 16-token chunks over 4-token blocks."""
    ref = hf_reference(path, PROMPTS, 10)
    _, outputs = run(path, PROMPTS, max_model_len=128, enable_prefix_caching=False)
    check_close(ref, outputs, PROMPTS)
    _, outputs = run(path, PROMPTS, max_model_len=128, block_size=4, max_num_batched_tokens=16,
                     enable_prefix_caching=False)
    check_close(ref, outputs, PROMPTS)
