"""An adapter that passed the frontend's check but cannot be read when a step needs it (its
host copy was evicted by --max-cpu-loras and its directory is gone) fails only its own
requests, with finish_reason "error": the engine keeps serving, every KV block comes back,
and the blocks computed without the adapter are not left in the prefix cache under its hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.lora.request import LoRARequest

P1 = [(i * 37) % 500 + 5 for i in range(20)]
P2 = [(i * 53) % 500 + 7 for i in range(40)]  # two full blocks of 16 and a tail


@pytest.fixture(scope="module")
def setup(checkpoint_factory, tmp_path_factory):
    from transformers import AutoConfig

    from pagedlm.lora.testing import write_random_adapter

    base = checkpoint_factory("llama")
    hf_config = AutoConfig.from_pretrained(base)
    root = tmp_path_factory.mktemp("failing_adapters")
    a = write_random_adapter(root / "a", hf_config, rank=8, seed=1, std=0.3)
    b = write_random_adapter(root / "b", hf_config, rank=8, seed=2, std=0.3)
    llm = LLM(base, device="cpu", enable_lora=True, max_loras=1, max_cpu_loras=1, max_lora_rank=8, max_model_len=128)
    return llm, LoRARequest("a", 1, a), LoRARequest("b", 2, b)


def _gen(llm: LLM, prompts: list[list[int]], loras: list[LoRARequest | None]):
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False, lora_request=loras)


def _num_free_blocks(llm: LLM) -> tuple[int, int]:
    kv = llm.llm_engine.core_client.engine_core.scheduler.kv
    return kv.num_free_blocks, kv.num_blocks


def test_unreadable_adapter_fails_its_requests_only(setup) -> None:
    llm, a, b = setup
    ref_a, ref_base = _gen(llm, [P2, P2], [a, None])
    assert ref_a.outputs[0].token_ids != ref_base.outputs[0].token_ids  # the adapter does something
    llm.reset_prefix_cache()
    _gen(llm, [P1], [b])  # b takes the one host copy: a must be read from disk again
    moved = Path(a.lora_path).with_name("a_moved")
    Path(a.lora_path).rename(moved)
    try:
        failed, base = _gen(llm, [P2, P2], [a, None])
    finally:
        moved.rename(a.lora_path)
    assert failed.outputs[0].finish_reason == "error"
    assert "'a' could not be loaded" in failed.error and "not a directory" in failed.error
    assert base.outputs[0].token_ids == ref_base.outputs[0].token_ids  # the base request in the same step
    free, total = _num_free_blocks(llm)
    assert free == total
    # Back on disk: the adapter works again and finds nothing cached from the failed step
    # (those blocks held base-model KV under the adapter's hash).
    again, = _gen(llm, [P2], [a])
    assert again.num_cached_tokens == 0
    assert again.outputs[0].token_ids == ref_a.outputs[0].token_ids
    assert _gen(llm, [P1], [b])[0].outputs[0].finish_reason == "length"
