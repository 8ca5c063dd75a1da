"""LoRA under tensor parallelism (CPU, gloo, two worker processes): A and B are sharded like
their base layers (column-parallel: B's rows, with the q / k / v and gate / up slices each
split as the fused weight is, KV heads replicated when ranks outnumber them; row-parallel:
A's columns, shrunk activations summed over ranks), so TP=2 equals TP=1."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams
from pagedlm.lora.request import LoRARequest

from .lora_helpers import assert_same

PROMPTS = [[11, 23, 5, 60, 2], [(i * 37) % 500 + 5 for i in range(30)], [7, 8, 9]]
KWARGS = dict(device="cpu", dtype="float32", max_model_len=64, enable_lora=True, max_loras=2, max_lora_rank=8)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoConfig

    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.lora.testing import write_random_adapter

    base = str(build_tiny_checkpoint(tmp_path_factory.mktemp("lora_tp_base"), seed=5, num_key_value_heads=1))
    hf_config = AutoConfig.from_pretrained(base)
    root = tmp_path_factory.mktemp("lora_tp_adapters")
    adapters = [LoRARequest(f"a{i}", i + 1, write_random_adapter(root / f"a{i}", hf_config, rank=8 // (i + 1),
                                                                 seed=i, std=0.3, dtype=torch.float32))
                for i in range(2)]
    return base, adapters


def _run(base: str, adapters: list[LoRARequest], **kwargs) -> list:
    llm = LLM(base, **KWARGS, **kwargs)
    loras = [None, *adapters]
    prompts = [{"prompt_token_ids": p} for p in PROMPTS for _ in loras]
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=3, ignore_eos=True)
    outputs = llm.generate(prompts, params, use_tqdm=False, lora_request=[lo for _ in PROMPTS for lo in loras])
    llm.llm_engine.engine_core.shutdown() if llm.llm_engine.engine_core is not None else None
    return outputs


def test_lora_tp2_equals_tp1(setup) -> None:
    base, adapters = setup
    ref = _run(base, adapters)
    ours = _run(base, adapters, tensor_parallel_size=2)
    assert_same(ref, ours, 3)
    # The adapters change the output (else the test could not fail).
    assert ref[0].outputs[0].token_ids != ref[1].outputs[0].token_ids
