"""A batch mixing three adapters and the base model equals transformers + PEFT (each adapter
merged, float32): with prefix caching on and the same prompts under every adapter (no
cross-adapter cache hits), chunked prefill, preemption, and more adapters than device slots."""

from __future__ import annotations

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.lora.request import LoRARequest

from .lora_helpers import ALL_TARGETS, check_close, make_adapter, merged_model, reference

pytest.importorskip("peft")

NUM_LOGPROBS = 3
MAX_TOKENS = 8
PROMPTS = [
    [11, 23, 5, 60, 2],
    list(range(30, 46)),  # one 16-token block
    [(i * 37) % 500 + 5 for i in range(37)],
]


@pytest.fixture(scope="module")
def lora_setup(checkpoint_factory, tmp_path_factory):
    """The base checkpoint, three adapters (all projections r=8; attention + down with rsLoRA
    r=4; MLP + o_proj r=16) and the merged reference of every (adapter, prompt)."""
    base = checkpoint_factory("llama")
    root = tmp_path_factory.mktemp("adapters")
    adapters = {
        "all": make_adapter(base, root / "all", ALL_TARGETS, r=8, seed=1),
        "attn": make_adapter(base, root / "attn", ["q_proj", "k_proj", "v_proj", "down_proj"], r=4, seed=2,
                             use_rslora=True),
        "mlp": make_adapter(base, root / "mlp", ["gate_proj", "up_proj", "o_proj"], r=16, alpha=8, seed=3),
    }
    refs = {name: reference(merged_model(base, path), PROMPTS, MAX_TOKENS)
            for name, path in [("base", None), *adapters.items()]}
    requests = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(adapters.items())}
    requests["base"] = None
    return base, requests, refs


def _params() -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS, ignore_eos=True)


def _generate(llm: LLM, requests: dict[str, LoRARequest | None]):
    """Every prompt under every adapter (and the base model), interleaved in one batch."""
    names = list(requests)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS for _ in names]
    loras = [requests[n] for _ in PROMPTS for n in names]
    outputs = llm.generate(prompts, _params(), use_tqdm=False, lora_request=loras)
    return {n: [outputs[i * len(names) + j] for i in range(len(PROMPTS))] for j, n in enumerate(names)}


def test_mixed_batch_prefix_cache_per_adapter(lora_setup):
    base, requests, refs = lora_setup
    llm = LLM(base, device="cpu", enable_lora=True, max_loras=4, max_lora_rank=16, max_model_len=128)
    first = _generate(llm, requests)
    for name, outs in first.items():
        check_close(refs[name], outs, NUM_LOGPROBS, name)
        assert [o.lora_request for o in outs] == [requests[name]] * len(PROMPTS), name  # as vLLM's RequestOutput
        # Same prompts under four adapters at once: no request is served another adapter's KV.
        assert [o.num_cached_tokens for o in outs] == [0, 0, 0], name
    second = _generate(llm, requests)
    for name, outs in second.items():
        check_close(refs[name], outs, NUM_LOGPROBS, name)
        # Each adapter (and the base model) now hits its own prefix: every full block but the last token's.
        assert [o.num_cached_tokens for o in outs] == [0, 0, 32], name


def test_more_adapters_than_slots_chunked_prefill_preemption(lora_setup):
    """Two device slots and two host copies for three adapters: requests of a third adapter
    wait for a slot; 8-token chunks; a KV cache small enough to preempt."""
    base, requests, refs = lora_setup
    llm = LLM(base, device="cpu", enable_lora=True, max_loras=2, max_cpu_loras=2, max_lora_rank=16,
              max_model_len=64, block_size=4, num_gpu_blocks_override=24, max_num_batched_tokens=8,
              max_num_seqs=4)
    outputs = _generate(llm, requests)
    for name, outs in outputs.items():
        check_close(refs[name], outs, NUM_LOGPROBS, name)
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions_total > 0
    manager = llm.llm_engine.engine_core.runner.lora
    assert len(manager.resident_ids()) == 2 and len(manager.host) == 2
