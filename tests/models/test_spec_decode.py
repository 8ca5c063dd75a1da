"""Speculative decoding end to end on CPU: with every proposer (n-gram, draft model, EAGLE,
EAGLE-3), greedy token ids and logprobs equal speculation off (prefix caching, chunked
prefill with drafts cut by the budget, preemption, n > 1, a prompt-logprobs request opting
out in the same batch); a draft equal to the target accepts every draft; seeded sampling
reproduces; bad configs are refused. Tiny EAGLE heads are written here in the checkpoint
layouts vLLM loads."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from pagedlm import LLM, SamplingParams
from pagedlm.config import ConfigError
from tests.models.eagle_helpers import write_eagle, write_eagle3

NUM_LOGPROBS = 3
PROMPTS = [
    [5, 6, 7, 8, 5, 6, 7, 8, 5, 6],
    [11, 23, 5, 60, 2],
    list(range(30, 46)),
    [(i * 37) % 500 + 5 for i in range(41)],
]
SETTINGS = {
    # n = 2: the copies share prompt blocks through the prefix cache
    "prefix_caching_n2": dict(enable_prefix_caching=True, max_model_len=128),
    # budget 12: prompts in chunks, drafts cut short; 16 blocks of 4 tokens: preemption
    "chunked_preempt": dict(max_num_batched_tokens=12, block_size=4, num_gpu_blocks_override=16,
                            enable_prefix_caching=True, max_model_len=64),
}


MAX_TOKENS = 16


def greedy(n: int = 1) -> SamplingParams:
    return SamplingParams(n=n, temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS, ignore_eos=True)


def perturbed_copy(src: str, dst: str, scale: float) -> str:
    """The target with noise on its matrices: a draft that agrees often, not always."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for name in os.listdir(dst):
        if name.endswith(".safetensors"):
            path = os.path.join(dst, name)
            weights = {k: v + scale * v.std() * torch.randn(v.shape, generator=gen) if v.dim() > 1 else v
                       for k, v in load_file(path).items()}
            save_file(weights, path, metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def target(seeded_checkpoint) -> str:
    """Tied embeddings echo tokens, so n-grams get accepted. A fixed seed: the acceptance
    assertions below hold for these weights, not for any random ones."""
    return seeded_checkpoint("llama_linear_tied", 1)


@pytest.fixture(scope="module")
def spec_configs(target, tmp_path_factory) -> dict[str, dict]:
    noisy = perturbed_copy(target, str(tmp_path_factory.mktemp("noisy_draft")), 0.05)
    return {
        "ngram": {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3},
        "draft_model": {"method": "draft_model", "model": noisy, "num_speculative_tokens": 3},
        "eagle": {"method": "eagle", "model": write_eagle(target, str(tmp_path_factory.mktemp("eagle"))),
                  "num_speculative_tokens": 3},
        "eagle3": {"method": "eagle3", "model": write_eagle3(target, str(tmp_path_factory.mktemp("eagle3"))),
                   "num_speculative_tokens": 3},
    }


def generate(path: str, settings: dict, spec: dict | None, n: int = 1):
    llm = LLM(path, device="cpu", speculative_config=spec, **settings)
    return llm, generate_with(llm, n)


def generate_with(llm: LLM, n: int = 1):
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    params = [greedy(n)] * len(PROMPTS)
    params[1] = SamplingParams(n=n, temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS, ignore_eos=True,
                               prompt_logprobs=2)  # opts out of speculation; the others still draft
    return llm.generate(prompts, params, use_tqdm=False)


_baselines: dict[str, list] = {}


def n_of(setting: str) -> int:
    return 2 if setting.endswith("_n2") else 1


def baseline(path: str, setting: str):
    if setting not in _baselines:
        _baselines[setting] = generate(path, SETTINGS[setting], None, n_of(setting))[1]
    return _baselines[setting]


def assert_same(ref, ours) -> None:
    for r, o in zip(ref, ours):
        assert len(r.outputs) == len(o.outputs)
        for rc, oc in zip(r.outputs, o.outputs):
            assert oc.token_ids == rc.token_ids
            for pos, (rl, ol) in enumerate(zip(rc.logprobs, oc.logprobs)):
                assert set(rl) == set(ol), f"top-k differs at {pos}"
                for tid in rl:
                    assert abs(rl[tid].logprob - ol[tid].logprob) < 1e-4 and rl[tid].rank == ol[tid].rank
        if r.prompt_logprobs is not None:
            assert [set(x or {}) for x in o.prompt_logprobs] == [set(x or {}) for x in r.prompt_logprobs]


def spec_stats(llm: LLM) -> dict:
    return llm.llm_engine.engine_core.scheduler.spec_stats.snapshot()


@pytest.mark.parametrize("method", ["ngram", "draft_model", "eagle", "eagle3"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_greedy_equals_speculation_off(target, spec_configs, method, setting):
    llm, outputs = generate(target, SETTINGS[setting], spec_configs[method], n_of(setting))
    assert_same(baseline(target, setting), outputs)
    stats = spec_stats(llm)
    assert stats["num_drafts"] > 5
    if method != "eagle3":  # a random EAGLE-3 head is almost never right
        # Drafts were verified, some accepted and some rejected (both paths ran).
        assert 0 < stats["num_accepted_tokens"] < stats["num_draft_tokens"]
    if setting == "chunked_preempt":
        assert llm.llm_engine.engine_core.scheduler.num_preemptions_total > 0
    assert llm.llm_engine.engine_core.scheduler.kv.num_free_blocks == llm.llm_engine.engine_core.scheduler.kv.num_blocks


def test_draft_equal_to_target_accepts_everything_and_sampling_reproduces(target):
    llm, outputs = generate(target, SETTINGS["prefix_caching_n2"],
                            {"method": "draft_model", "model": target, "num_speculative_tokens": 4}, n=2)
    assert_same(baseline(target, "prefix_caching_n2"), outputs)
    stats = spec_stats(llm)
    assert stats["num_draft_tokens"] > 20 and stats["num_accepted_tokens"] == stats["num_draft_tokens"]
    sampled = SamplingParams(temperature=0.9, top_p=0.9, seed=11, max_tokens=8, ignore_eos=True)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS[:2]]
    first = [o.outputs[0].token_ids for o in llm.generate(prompts, sampled, use_tqdm=False)]
    again = [o.outputs[0].token_ids for o in llm.generate(prompts, sampled, use_tqdm=False)]
    assert first == again
    other = SamplingParams(temperature=0.9, top_p=0.9, seed=12, max_tokens=8, ignore_eos=True)
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, other, use_tqdm=False)] != first


@pytest.mark.parametrize("spec, message", [
    ({"method": "medusa", "num_speculative_tokens": 2}, "method must be one of"),
    ({"method": "ngram"}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 3, "prompt_lookup_max": 2},
     "prompt_lookup_min"),
    ({"method": "draft_model", "num_speculative_tokens": 2}, "needs a draft 'model'"),
    ({"method": "ngram", "num_speculative_tokens": 2, "speculative_token_tree": "[(0,)]"}, "not supported"),
    ({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": 1}, "integer >= 2 or null"),
    ({"method": "ngram", "num_speculative_tokens": 2, "disable_by_batch_size": "8"}, "integer >= 2 or null"),
    ({"method": "ngram", "num_speculative_tokens": 2, "bogus": 1}, "unknown key"),
])
def test_bad_speculative_configs_are_refused(target, spec, message):
    with pytest.raises(ConfigError, match=message):
        LLM(target, device="cpu", max_model_len=128, speculative_config=spec)


def test_speculation_refuses_a_foreign_vocabulary(target, checkpoint_factory):
    gpt2 = checkpoint_factory("gpt2")
    from pagedlm.config import load_hf_config

    if load_hf_config(gpt2).vocab_size != load_hf_config(target).vocab_size:
        with pytest.raises(ConfigError, match="vocabulary"):
            LLM(target, device="cpu", max_model_len=128,
                speculative_config={"method": "draft_model", "model": gpt2, "num_speculative_tokens": 2})


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_structured_output_request_opts_out_in_a_speculating_batch(target, async_scheduling):
    """A grammar-constrained request runs without drafts (its bitmask applies to its one
    row) while the others speculate; every output equals speculation off (with async
    scheduling too: the bitmask is computed when the step is scheduled)."""
    prompts = ["hello there", "the cat sat on the mat the cat sat", "abc"]
    params = [SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=10, structured_outputs={"choice": ["yes", "no", "maybe so"]}),
              SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=1)]
    off = LLM(target, device="cpu", max_model_len=128).generate(prompts, params, use_tqdm=False)
    llm = LLM(target, device="cpu", max_model_len=128, speculative_config={"method": "ngram", "num_speculative_tokens": 3},
              async_scheduling=async_scheduling)
    on = llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in on] == [o.outputs[0].token_ids for o in off]
    assert on[1].outputs[0].text in ("yes", "no", "maybe so")
    assert spec_stats(llm)["num_drafts"] > 0


@pytest.mark.parametrize("method", ["ngram", "eagle"])
def test_device_step_preparation_with_rollback(target, spec_configs, method):
    """The CUDA path of step preparation (positions, slots, block tables from the persistent
    batch), run through its PyTorch reference: rejected drafts roll the row's block-table
    tail back before new blocks land, so every step's row equals the request's block list
    and the output equals speculation off (chunked prefill, preemption)."""
    llm = LLM(target, device="cpu", speculative_config=spec_configs[method], **SETTINGS["chunked_preempt"])
    runner = llm.llm_engine.engine_core.executor.worker.runner
    runner.device_step_prep = True
    forward, checked = runner._forward, []

    def checking_forward(inputs, rows):
        for req_id, row in zip(inputs.req_ids, rows.tolist()):
            blocks = runner.requests[req_id].block_ids
            assert runner.batch.block_table[row, : runner.batch.num_blocks[row]].tolist() == blocks
            assert not runner.batch.block_table[row, len(blocks):].any()  # the tail reads zero
        checked.append(len(rows))
        return forward(inputs, rows)

    runner._forward = checking_forward
    assert_same(baseline(target, "chunked_preempt"), llm.generate(*_one_opting_out(), use_tqdm=False))
    assert spec_stats(llm)["num_accepted_tokens"] < spec_stats(llm)["num_draft_tokens"]  # rollbacks happened
    assert len(checked) > 10


def _one_opting_out() -> tuple[list[dict], list[SamplingParams]]:
    """PROMPTS, greedy, the second asking for prompt logprobs (which opts it out of speculation)."""
    params = [greedy()] * len(PROMPTS)
    params[1] = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS, ignore_eos=True,
                               prompt_logprobs=2)
    return [{"prompt_token_ids": p} for p in PROMPTS], params


def test_penalties_under_speculation_equal_speculation_off(target, spec_configs):
    """Penalised rows verify with the drafts counted as generated; the persistent batch's
    on-device counts take the accepted tokens only (a plain step after would read them)."""
    # Mild: a strong penalty leaves the n-grams nothing to accept.
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, repetition_penalty=1.05)
    prompts = [{"prompt_token_ids": p} for p in PROMPTS[:2]]
    plain = LLM(target, device="cpu", max_model_len=128)
    ref = [o.outputs[0].token_ids for o in plain.generate(prompts, params, use_tqdm=False)]
    unpenalised = plain.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True),
                                 use_tqdm=False)
    assert ref != [o.outputs[0].token_ids for o in unpenalised]  # the penalty matters here
    llm = LLM(target, device="cpu", speculative_config=spec_configs["ngram"], max_model_len=128)
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)] == ref
    assert spec_stats(llm)["num_accepted_tokens"] > 0
    # The counts match the emitted tokens of a request still running.
    runner = llm.llm_engine.engine_core.executor.worker.runner
    llm.llm_engine.add_request("live", prompts[0], params)
    for _ in range(4):
        llm.llm_engine.step()
    row, state = runner.batch.row_of["live"], runner.requests["live"]
    expected = torch.bincount(torch.tensor(state.output_token_ids), minlength=runner.vocab_size).to(torch.int32)
    assert torch.equal(runner.batch.output_counts[row].cpu(), expected)


@pytest.mark.parametrize("method, device_prep", [("ngram", True), ("draft_model", False), ("eagle", True)])
def test_padded_verify_graph_layout_equals_eager(target, spec_configs, method, device_prep):
    """The verify CUDA graphs' padded layout, replayed eagerly on CPU (the same staging,
    step preparation and padded forward a graph replays): requests with fewer drafts than
    k (n-gram misses, budget cuts) and padding sequences leave the output equal to
    speculation off, with chunked prefill, preemption and rollbacks."""
    from pagedlm.spec_decode.verify_graphs import VerifyGraphRunner, verify_sizes
    from pagedlm.worker.cuda_graphs import capture_sizes

    llm = LLM(target, device="cpu", speculative_config=spec_configs[method], **SETTINGS["chunked_preempt"])
    runner = llm.llm_engine.engine_core.executor.worker.runner
    runner.device_step_prep = device_prep
    query_len = spec_configs[method]["num_speculative_tokens"] + 1
    sizes = verify_sizes(capture_sizes(8), query_len, runner.buffers.max_seqs, runner.buffers.max_tokens, None)
    graphs = VerifyGraphRunner(runner.model, runner.buffers, sizes, query_len, 64)
    runner.verify_graphs = graphs
    assert_same(baseline(target, "chunked_preempt"), llm.generate(*_one_opting_out(), use_tqdm=False))
    assert graphs.num_replays >= 3 and graphs.num_padded_replays > 0  # padded verify steps ran
    stats = spec_stats(llm)
    assert 0 < stats["num_accepted_tokens"] < stats["num_draft_tokens"]


def test_disable_by_batch_size_pauses_speculation(target):
    """With disable_by_batch_size=3, steps with 3 or more running requests verify no drafts;
    once fewer run (requests finish at different lengths), speculation resumes. Output
    equals speculation off."""
    spec = {"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": 3}
    llm = LLM(target, device="cpu", speculative_config=spec, **SETTINGS["prefix_caching_n2"])
    sched = llm.llm_engine.engine_core.scheduler
    assert sched.config.spec_disable_by_batch_size == 3
    schedule, scheduled = sched.schedule, []

    def recording_schedule():
        num_running = len(sched.running)
        out = schedule()
        scheduled.append((num_running, bool(out.scheduled_spec_decode_tokens)))
        return out

    sched.schedule = recording_schedule
    lengths = (MAX_TOKENS, 12, 8, 4)
    params = [SamplingParams(temperature=0.0, max_tokens=m, ignore_eos=True) for m in lengths]
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    ref = baseline(target, "prefix_caching_n2")
    assert [o.outputs[0].token_ids for o in outs] == [r.outputs[0].token_ids[:m] for r, m in zip(ref, lengths)]
    assert not any(drafted for running, drafted in scheduled if running >= 3)
    assert any(drafted for running, drafted in scheduled if running < 3)


def test_disable_by_batch_size_default_and_null():
    from pagedlm.spec_decode.config import SpeculativeConfig, default_disable_by_batch_size

    cfg = SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 3})
    assert cfg.disable_by_batch_size == default_disable_by_batch_size(3) == 32
    assert default_disable_by_batch_size(4) == 25 and default_disable_by_batch_size(16) == 7
    never = SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 3, "disable_by_batch_size": None})
    assert never.disable_by_batch_size is None


@pytest.mark.parametrize("method", ["ngram", "draft_model", "eagle", "eagle3"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_async_scheduling_with_speculation_equals_off(target, spec_configs, method, setting):
    """Async scheduling: a request whose step in flight carries no drafts (and whose last
    proposal was empty) runs ahead as a plain decode; a verify step, or a proposal due,
    makes it wait for its output. Prefix caching with n = 2, chunked prefill, preemption
    (with steps in flight), a prompt-logprobs request; greedy ids and logprobs equal
    speculation off."""
    llm = LLM(target, device="cpu", speculative_config=spec_configs[method], async_scheduling=True,
              **SETTINGS[setting])
    assert llm.llm_engine.engine_core.config.scheduler_config.async_scheduling
    sched = llm.llm_engine.engine_core.scheduler
    ahead, schedule = [], sched.schedule

    def recording_schedule():
        out = schedule()  # a request scheduled while a step of its own is in flight: 2 pending
        ahead.extend(r for r in out.num_scheduled_tokens if sched.requests[r].num_pending_tokens > 1)
        return out

    sched.schedule = recording_schedule
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    params = [greedy(n_of(setting))] * len(PROMPTS)
    params[1] = SamplingParams(n=n_of(setting), temperature=0.0, max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS,
                               ignore_eos=True, prompt_logprobs=2)
    assert_same(baseline(target, setting), llm.generate(prompts, params, use_tqdm=False))
    stats = spec_stats(llm)
    if method == "eagle3":  # a random EAGLE-3 head is almost never right: drafts were verified
        assert stats["num_drafts"] > 5
    else:
        assert 0 < stats["num_accepted_tokens"] < stats["num_draft_tokens"]
    assert ahead, "no request ran ahead of its step in flight"
    if setting == "chunked_preempt":
        assert sched.num_preemptions_total > 0
    assert sched.kv.num_free_blocks == sched.kv.num_blocks
    assert not sched.spec_gate.ahead_ok  # forgotten as requests finish


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_draft_model_chain_through_staged_graph_buffers_equals_off(target, spec_configs, async_scheduling):
    """The draft model's CUDA-graph path on CPU, the forward eager where a GPU replays a
    graph: chain steps over the graphs' padded static buffers (one staged upload per
    proposal, per-step copies), mirrors of verify steps over the target's padded verify
    layout. With chunked prefill and preemption, output equals speculation off, and the
    drafts equal the eager chain's (same acceptance, position by position: padding rows
    write no KV, every row reads its own positions and blocks)."""
    from pagedlm.spec_decode.verify_graphs import VerifyGraphRunner, verify_sizes
    from pagedlm.worker.cuda_graphs import capture_sizes

    def run(graphed: bool):
        llm = LLM(target, device="cpu", speculative_config=spec_configs["draft_model"],
                  async_scheduling=async_scheduling, **SETTINGS["chunked_preempt"])
        runner = llm.llm_engine.engine_core.runner
        if graphed:  # verify steps in the graphs' padded layout, mirrored by the draft's stand-ins
            sizes = verify_sizes(capture_sizes(8), 4, runner.buffers.max_seqs, runner.buffers.max_tokens, None)
            runner.verify_graphs = VerifyGraphRunner(runner.model, runner.buffers, sizes, 4, 64)
            runner.spec.capture_proposer_graphs()
            assert runner.spec.proposer.graphs.chain_sizes[:3] == [1, 2, 4]
            assert sorted(runner.spec.proposer.graphs.mirror) == [("verify", s, 4 * s) for s in sizes]
        return llm, generate_with(llm)

    llm, outputs = run(graphed=True)
    assert_same(baseline(target, "chunked_preempt"), outputs)
    graphs = llm.llm_engine.engine_core.runner.spec.proposer.graphs
    assert graphs.num_chain_replays > 0 and graphs.num_mirror_replays > 0
    stats = spec_stats(llm)
    assert 0 < stats["num_accepted_tokens"] < stats["num_draft_tokens"]
    assert stats == spec_stats(run(graphed=False)[0])


MIXED_MAX_TOKENS = [16, 5, 11, 8]  # requests finishing at different steps


class _StaticHidden:
    """The target's forward returning a view of one buffer, as a CUDA graph's static output
    does: the step launched ahead (async) overwrites the hidden states of the step in flight."""

    def __init__(self, forward) -> None:
        self.forward, self.buffer = forward, None

    def __call__(self, inputs, rows):
        hidden = self.forward(inputs, rows)
        if self.buffer is None:
            self.buffer = hidden.new_empty(4096, hidden.shape[1])
        self.buffer[: len(hidden)].copy_(hidden)
        return self.buffer[: len(hidden)]


def _eagle_run(target: str, spec: dict | None, async_scheduling: bool, setting: str):
    """Outputs, the engine and every proposal ((request, tokens so far) -> (newest token,
    drafts)) of a run of requests finishing at different steps, one opting out; the runner
    as on a GPU (step preparation on the device, hidden states in a static buffer)."""
    llm = LLM(target, device="cpu", speculative_config=spec, async_scheduling=async_scheduling, **SETTINGS[setting])
    runner = llm.llm_engine.engine_core.runner
    runner.device_step_prep = True  # the GPU's step preparation (positions stay on the device)
    runner._forward = _StaticHidden(runner._forward)
    proposals: dict[tuple[str, int], tuple[int, list[int]]] = {}
    if spec is not None:
        propose = runner.spec.proposer.propose

        def recording_propose(states):
            drafts, probs = propose(states)
            proposals.update(((s.req_id, len(s.token_ids)), (s.token_ids[-1], d)) for s, d in zip(states, drafts))
            return drafts, probs

        runner.spec.proposer.propose = recording_propose
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    params = [SamplingParams(n=n_of(setting), temperature=0.0, max_tokens=m, logprobs=NUM_LOGPROBS, ignore_eos=True,
                             prompt_logprobs=2 if i == 1 else None) for i, m in enumerate(MIXED_MAX_TOKENS)]
    return llm.generate(prompts, params, use_tqdm=False), llm, proposals


@pytest.mark.parametrize("method", ["eagle", "eagle3"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_eagle_under_async_drafts_from_the_collected_steps_features(target, spec_configs, method, setting):
    """Under async scheduling the step launched ahead (a request that opts out runs ahead,
    prefills, chunks) has replaced the target's hidden states (a static buffer, as a CUDA
    graph's) before the step in flight is proposed from; a request may be preempted while
    its step is in flight (its head KV for that step's positions is still written: a prefix
    hit after its recompute reads it). Every proposal equals the one made with async off at
    the same point of the same request (a stale or foreign feature row, or missing head KV,
    changes it: the pass-through EAGLE head's drafts repeat the token its feature row
    predicted). Without budget cuts (which depend on the batch) acceptance counts are equal
    too; output equals speculation off."""
    key = f"mixed_lengths_{setting}"
    if key not in _baselines:
        _baselines[key] = _eagle_run(target, None, False, setting)[0]
    sync_out, sync_llm, sync_proposals = _eagle_run(target, spec_configs[method], False, setting)
    out, llm, proposals = _eagle_run(target, spec_configs[method], True, setting)
    assert_same(_baselines[key], sync_out)
    assert_same(_baselines[key], out)
    assert [len(o.token_ids) for r in out for o in r.outputs] == [m for m in MIXED_MAX_TOKENS
                                                                  for _ in range(n_of(setting))]
    common = set(proposals) & set(sync_proposals)
    assert len(common) > 0.9 * len(sync_proposals) > 20
    assert {k: proposals[k] for k in common} == {k: sync_proposals[k] for k in common}
    if method == "eagle":
        assert all(drafts == [newest] * 3 for newest, drafts in proposals.values())
    if setting == "chunked_preempt":
        assert llm.llm_engine.engine_core.scheduler.num_preemptions_total > 0
    else:
        assert proposals == sync_proposals and spec_stats(llm) == spec_stats(sync_llm)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_acceptance_line_follows_disable_log_stats(target, spec_configs, async_scheduling: bool) -> None:
    """The periodic SpecDecoding line: logged with or without async scheduling (the overlapped
    step used to skip it), and off with disable_log_stats, as vLLM's."""
    prompts = ["the cat sat on the mat the cat sat on the mat the cat"] * 2
    for disable, expect_lines in ((False, True), (True, False)):
        llm = LLM(target, device="cpu", max_model_len=128, speculative_config=spec_configs["ngram"],
                  async_scheduling=async_scheduling, disable_log_stats=disable)
        core = llm.llm_engine.engine_core
        assert (core.spec_logger is not None) == expect_lines
        lines: list[str] = []
        if core.spec_logger is not None:
            core.spec_logger.interval_s = 0.0
            log = core.spec_logger.maybe_log
            core.spec_logger.maybe_log = lambda snap, force=False: lines.append(log(snap, force)) or lines[-1]
        llm.generate(prompts, greedy(), use_tqdm=False)
        assert any(lines) == expect_lines
