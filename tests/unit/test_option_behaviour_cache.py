"""The KV cache options at run time (test_option_walk.py shows each one reaches the config;
these show the engine built from it honours it): the block size the runner's cache tensors
and the scheduler's prefix cache use, the block count (--num-gpu-blocks-override, or from
--kv-cache-memory-bytes), and prefix caching switched off."""

from __future__ import annotations

import pytest

from pagedlm import LLM, SamplingParams

PROMPTS = [[(i * 37) % 500 + 5 for i in range(n)] for n in (50, 70, 9)]  # up to three 32-token blocks
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
KWARGS = dict(device="cpu", max_model_len=128)


def _greedy(llm: LLM, prompts: list[list[int]] = PROMPTS) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.fixture(scope="module")
def default_llm(llama_checkpoint: str) -> LLM:
    return LLM(llama_checkpoint, **KWARGS)


@pytest.fixture(scope="module")
def default_ids(default_llm: LLM) -> list[list[int]]:
    return _greedy(default_llm)


def test_block_size_sizes_the_cache_blocks_and_keeps_the_output(llama_checkpoint: str, default_llm: LLM,
                                                                 default_ids: list[list[int]]) -> None:
    llm = LLM(llama_checkpoint, block_size=32, **KWARGS)
    core = llm.llm_engine.engine_core
    # The runner's cache tensors are (K/V, blocks, tokens per block, KV heads, head dim).
    assert all(cache.shape[2] == 32 for cache in core.runner.kv_caches)
    assert all(cache.shape[2] == 16 for cache in default_llm.llm_engine.engine_core.runner.kv_caches)
    assert core.scheduler.block_size == core.scheduler.kv.block_size == 32
    assert _greedy(llm) == default_ids
    # The prefix cache hits whole 32-token blocks: 32 of a repeated 50-token prompt (16-token
    # blocks would give 48).
    prompt = {"prompt_token_ids": PROMPTS[0]}
    for engine, cached in ((llm, 32), (default_llm, 48)):
        engine.generate(prompt, GREEDY, use_tqdm=False)
        assert engine.generate(prompt, GREEDY, use_tqdm=False)[0].num_cached_tokens == cached


def test_num_gpu_blocks_override_is_the_block_count(llama_checkpoint: str, default_llm: LLM) -> None:
    llm = LLM(llama_checkpoint, num_gpu_blocks_override=9, **KWARGS)
    core = llm.llm_engine.engine_core
    assert core.runner.num_blocks == 9 and all(cache.shape[1] == 9 for cache in core.runner.kv_caches)
    assert core.scheduler.kv.num_blocks == 9 and llm.llm_engine.get_stats().num_total_blocks == 9
    # Six distinct prompts need 20 blocks: in 9 they cannot all run at once (they all do in the
    # default-sized cache), and the tokens stay those of the default-sized cache.
    prompts = PROMPTS + [[t + 1 for t in p] for p in PROMPTS]
    engine = llm.llm_engine
    for i, p in enumerate(prompts):
        engine.add_request(str(i), {"prompt_token_ids": p}, GREEDY)
    engine.step()
    stats = engine.get_stats()
    assert stats.num_waiting_reqs > 0 and stats.num_running_reqs + stats.num_waiting_reqs == 6
    finished = {}
    while engine.has_unfinished_requests():
        finished.update((o.request_id, o.outputs[0].token_ids) for o in engine.step() if o.finished)
    assert [finished[str(i)] for i in range(6)] == _greedy(default_llm, prompts)


def test_kv_cache_memory_bytes_gives_the_blocks_that_fit(llama_checkpoint: str,
                                                         default_ids: list[list[int]]) -> None:
    from pagedlm.engine_args import EngineArgs
    from pagedlm.worker.memory import kv_cache_bytes_per_block

    per_block = kv_cache_bytes_per_block(EngineArgs(model=llama_checkpoint, **KWARGS).create_engine_config())
    budget = 11 * per_block + per_block // 2  # 11.5 blocks' worth: 11 blocks
    llm = LLM(llama_checkpoint, kv_cache_memory_bytes=budget, **KWARGS)
    core = llm.llm_engine.engine_core
    assert core.runner.num_blocks == core.scheduler.kv.num_blocks == 11
    assert sum(c.numel() * c.element_size() for c in core.runner.kv_caches) == 11 * per_block <= budget
    assert _greedy(llm) == default_ids


@pytest.mark.parametrize("enabled", [True, False])
def test_enable_prefix_caching(llama_checkpoint: str, default_ids: list[list[int]], enabled: bool) -> None:
    llm = LLM(llama_checkpoint, enable_prefix_caching=enabled, **KWARGS)
    assert _greedy(llm) == default_ids
    again = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], GREEDY, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in again] == default_ids
    # A repeated prompt is served from the cache (every full block but the one holding its last
    # token), or, with caching off, computed again.
    expected = [(len(p) - 1) // 16 * 16 if enabled else 0 for p in PROMPTS]
    assert [o.num_cached_tokens for o in again] == expected
    assert (llm.llm_engine.get_stats().prefix_cache_hits_total > 0) == enabled
