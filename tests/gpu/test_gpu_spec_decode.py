"""Speculative decoding on a GPU (float32 tiny checkpoint): greedy ids equal speculation off
for every proposer, a draft equal to the target accepts everything, and verify steps replay
their CUDA graphs (padded ones too) with the same ids as eager verify steps. Skipped
without CUDA."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PROMPTS = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [11, 23, 5, 60, 2], list(range(30, 46)),
           [(i * 37) % 500 + 5 for i in range(41)]]


def greedy_ids(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


def gpu_llm(path: str, spec: dict | None, enforce_eager: bool = False, async_scheduling: bool | None = None) -> LLM:
    return LLM(path, device="cuda", dtype="float32", max_model_len=128, max_num_seqs=8,
               num_gpu_blocks_override=256, speculative_config=spec, enforce_eager=enforce_eager,
               async_scheduling=async_scheduling)


def test_gpu_speculation_matches_off(checkpoint_factory):
    path = checkpoint_factory("llama_linear_tied")
    off = greedy_ids(gpu_llm(path, None))
    for spec in ({"method": "ngram", "num_speculative_tokens": 3},
                 {"method": "draft_model", "model": path, "num_speculative_tokens": 3}):
        llm = gpu_llm(path, spec)
        ids = greedy_ids(llm)
        assert sum(a == b for a, b in zip(off, ids)) >= len(PROMPTS) - 1, (spec["method"], off, ids)
        stats = llm.llm_engine.engine_core.scheduler.spec_stats.snapshot()
        assert stats["num_drafts"] > 0
        if spec["method"] == "draft_model":  # the target as its own draft
            assert stats["num_accepted_tokens"] >= 0.95 * stats["num_draft_tokens"]


@pytest.mark.parametrize("method", ["ngram", "draft_model"])
def test_gpu_verify_graphs_equal_eager_and_speculation_off(checkpoint_factory, method):
    path = checkpoint_factory("llama_linear_tied")
    spec = {"method": "ngram", "num_speculative_tokens": 3} if method == "ngram" else \
        {"method": "draft_model", "model": path, "num_speculative_tokens": 3}
    off = greedy_ids(gpu_llm(path, None))
    eager = gpu_llm(path, spec, enforce_eager=True)
    eager_ids = greedy_ids(eager)
    assert eager.llm_engine.engine_core.runner.verify_graphs is None
    llm = gpu_llm(path, spec)
    ids = greedy_ids(llm)
    graphs = llm.llm_engine.engine_core.runner.verify_graphs
    assert graphs is not None and graphs.graphs, "no verify graph was captured"
    assert graphs.num_replays > 0, "no verify step replayed a graph"
    if method == "ngram":  # n-gram misses leave some requests short of k drafts: padded steps
        assert graphs.num_padded_replays > 0
    # The graphs' padded GEMMs may pick other cuBLAS kernels than the eager step's: float32
    # equal token for token, bar a rare near-tie (as decode graphs vs eager).
    assert sum(a == b for a, b in zip(eager_ids, ids)) >= len(PROMPTS) - 1, (eager_ids, ids)
    assert sum(a == b for a, b in zip(off, ids)) >= len(PROMPTS) - 1, (off, ids)
    stats = llm.llm_engine.engine_core.scheduler.spec_stats.snapshot()
    assert stats["num_accepted_tokens"] > 0


def test_gpu_paused_speculation_samples_in_the_decode_graphs(checkpoint_factory):
    """disable_by_batch_size=2 with 4 prompts: speculation pauses until one request is left;
    the paused decode steps sample through the decode graphs' LM-head and sampling graphs."""
    path = checkpoint_factory("llama_linear_tied")
    off = greedy_ids(gpu_llm(path, None))
    llm = gpu_llm(path, {"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": 2})
    ids = greedy_ids(llm)
    runner = llm.llm_engine.engine_core.runner
    assert runner.graph_sampler is not None and runner.graph_sampler.num_replays > 0
    assert sum(a == b for a, b in zip(off, ids)) >= len(PROMPTS) - 1, (off, ids)


def test_gpu_async_scheduling_with_speculation_matches_off(checkpoint_factory):
    path = checkpoint_factory("llama_linear_tied")
    off = greedy_ids(gpu_llm(path, None))
    for spec in ({"method": "ngram", "num_speculative_tokens": 3},
                 {"method": "draft_model", "model": path, "num_speculative_tokens": 3}):
        llm = gpu_llm(path, spec, async_scheduling=True)
        assert llm.llm_engine.engine_core.config.scheduler_config.async_scheduling
        ids = greedy_ids(llm)
        assert sum(a == b for a, b in zip(off, ids)) >= len(PROMPTS) - 1, (spec["method"], off, ids)
        assert llm.llm_engine.engine_core.scheduler.spec_stats.snapshot()["num_accepted_tokens"] > 0


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_gpu_draft_model_graphs_equal_eager_and_off(checkpoint_factory, async_scheduling):
    """The draft model drafts through its chain graphs and mirrors the target's graph steps
    through its own: ids equal the eager engine's and speculation off; a draft equal to the
    target accepts every draft in float32 (bf16 misses are near-ties of random weights)."""
    path = checkpoint_factory("llama_linear_tied")
    spec = {"method": "draft_model", "model": path, "num_speculative_tokens": 3}
    off = greedy_ids(gpu_llm(path, None))
    eager_ids = greedy_ids(gpu_llm(path, spec, enforce_eager=True, async_scheduling=async_scheduling))
    llm = gpu_llm(path, spec, async_scheduling=async_scheduling)
    graphs = llm.llm_engine.engine_core.runner.spec.proposer.graphs
    assert graphs is not None and graphs.chain and graphs.mirror, "no draft graph was captured"
    ids = greedy_ids(llm)
    assert graphs.num_chain_replays > 0 and graphs.num_mirror_replays > 0, "the draft replayed no graph"
    assert sum(a == b for a, b in zip(eager_ids, ids)) >= len(PROMPTS) - 1, (eager_ids, ids)
    assert sum(a == b for a, b in zip(off, ids)) >= len(PROMPTS) - 1, (off, ids)
    stats = llm.llm_engine.engine_core.scheduler.spec_stats.snapshot()
    assert stats["num_draft_tokens"] > 0 and stats["num_accepted_tokens"] == stats["num_draft_tokens"], stats


def test_gpu_ngram_async_runs_ahead_and_matches_off(checkpoint_factory):
    """Async is the default with n-gram on a GPU; requests whose proposals miss run ahead of
    their step in flight; ids equal speculation off."""
    path = checkpoint_factory("llama_linear_tied")
    off = greedy_ids(gpu_llm(path, None))
    llm = gpu_llm(path, {"method": "ngram", "num_speculative_tokens": 3})
    core = llm.llm_engine.engine_core
    assert core.config.scheduler_config.async_scheduling
    ahead, schedule = [], core.scheduler.schedule

    def recording_schedule():
        out = schedule()
        ahead.extend(r for r in out.num_scheduled_tokens if core.scheduler.requests[r].num_pending_tokens > 1)
        return out

    core.scheduler.schedule = recording_schedule
    ids = greedy_ids(llm)
    assert ahead, "no request ran ahead of its step in flight"
    assert sum(a == b for a, b in zip(off, ids)) >= len(PROMPTS) - 1, (off, ids)


@pytest.mark.parametrize("method", ["eagle", "eagle3"])
def test_gpu_eagle_under_async_default_matches_off(checkpoint_factory, tmp_path, method):
    """Async scheduling is the default with EAGLE heads too: the head drafts from its own copy
    of each step's features (the step launched ahead, here the opted-out request's plain
    decode, replays the target's graphs into their static outputs first). ids equal
    speculation off; the pass-through EAGLE head's drafts repeat the token its feature row
    predicted, the newest one (a stale or foreign row would not)."""
    from tests.models.eagle_helpers import write_eagle, write_eagle3

    path = checkpoint_factory("llama_linear_tied")
    head = (write_eagle if method == "eagle" else write_eagle3)(path, str(tmp_path))
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    params = [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True, prompt_logprobs=1 if i == 1 else None)
              for i in range(len(PROMPTS))]  # prompt logprobs: opts out of speculation, runs ahead

    def ids_of(llm: LLM) -> list[list[int]]:
        return [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]

    off = ids_of(gpu_llm(path, None))
    llm = gpu_llm(path, {"method": method, "model": head, "num_speculative_tokens": 3})
    core = llm.llm_engine.engine_core
    assert core.config.scheduler_config.async_scheduling
    proposer, proposals = core.runner.spec.proposer, []
    propose = proposer.propose

    def recording_propose(states):
        drafts, probs = propose(states)
        proposals.extend((s.token_ids[-1], d) for s, d in zip(states, drafts))
        return drafts, probs

    proposer.propose = recording_propose
    ids = ids_of(llm)
    assert sum(a == b for a, b in zip(off, ids)) >= len(PROMPTS) - 1, (off, ids)
    assert core.scheduler.spec_stats.snapshot()["num_drafts"] > 10
    if method == "eagle":
        assert core.runner.graph_runner is not None, "the target's CUDA graphs were not captured"
        repeats = sum(d == [newest] * len(d) for newest, d in proposals)
        assert repeats >= 0.9 * len(proposals) and len(proposals) > 10, (repeats, len(proposals))
