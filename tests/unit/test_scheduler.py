"""Scheduler: token budget, chunked prefill, prefix hits, preemption, stop conditions,
aborts. Pure Python with fake sizes and a fake model runner; no torch.

The fake runner keeps its own view of each request, built only from SchedulerOutput
messages (new requests in full, running ones as deltas), and samples one token for every
request whose computed tokens caught up with its tokens ([] for a partial prefill chunk).
After every step the runner's block tables must equal the KV manager's, ref counts must
equal the number of requests holding each block, and every block not held must be in the
free queue. Every scenario ends with all blocks free.
"""

from __future__ import annotations

import subprocess
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pagedlm.config import CacheConfig, SchedulerConfig
from pagedlm.engine.messages import EngineCoreOutput, ModelRunnerOutput, SchedulerOutput
from pagedlm.engine.request import Request, RequestStatus
from pagedlm.engine.scheduler import Scheduler
from pagedlm.sampling_params import SamplingParams

REPO_ROOT = Path(__file__).resolve().parents[2]
BS = 4
EOS = 2


def make_scheduler(
    num_blocks: int = 64, *, budget: int = 64, max_num_seqs: int = 16, max_model_len: int = 256,
    caching: bool = True, policy: str = "fcfs", long_prefill_threshold: int = 0,
) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=max_model_len,
                        scheduling_policy=policy, long_prefill_token_threshold=long_prefill_threshold),
        CacheConfig(block_size=BS, enable_prefix_caching=caching),
        num_blocks,
    )


def make_request(req_id: str, prompt: list[int] | int, *, eos: int | None = EOS, priority: int = 0,
                 arrival: float | None = None, **params) -> Request:
    if isinstance(prompt, int):  # a prompt of that many distinct tokens, unique per request
        base = (zlib.crc32(req_id.encode()) + 1) << 10  # deterministic, far from EOS/stop ids
        prompt = [base + i for i in range(prompt)]
    params.setdefault("max_tokens", 100)
    sp = SamplingParams(**params)
    # As the engine's input processor does: the sampler's stop set includes eos.
    sp.all_stop_token_ids = set(sp.stop_token_ids) | ({eos} if eos is not None and not sp.ignore_eos else set())
    return Request(req_id, prompt, sp, eos_token_id=eos, arrival_time=arrival, priority=priority)


@dataclass
class RunnerState:
    token_ids: list[int]
    block_ids: list[int]
    num_computed_tokens: int


@dataclass
class FakeRunner:
    """Model runner stand-in: tracks requests only from SchedulerOutput messages."""

    default_token: int = 7
    state: dict[str, RunnerState] = field(default_factory=dict)

    def execute(self, out: SchedulerOutput, tokens: dict[str, int] | None = None) -> ModelRunnerOutput:
        tokens = tokens or {}
        for req_id in out.finished_req_ids | out.preempted_req_ids:
            self.state.pop(req_id, None)
        for new in out.scheduled_new_reqs:
            assert new.req_id not in self.state, f"{new.req_id} sent in full twice"
            self.state[new.req_id] = RunnerState(
                new.prompt_token_ids + new.output_token_ids, list(new.block_ids), new.num_computed_tokens
            )
        for cached in out.scheduled_cached_reqs:
            st = self.state[cached.req_id]
            assert st.num_computed_tokens == cached.num_computed_tokens
            st.block_ids += cached.new_block_ids
        assert set(out.num_scheduled_tokens) == (
            {n.req_id for n in out.scheduled_new_reqs} | {c.req_id for c in out.scheduled_cached_reqs}
        )
        assert out.total_num_scheduled_tokens == sum(out.num_scheduled_tokens.values())
        req_ids, sampled = [], []
        for req_id, num in out.num_scheduled_tokens.items():
            st = self.state[req_id]
            assert num > 0
            st.num_computed_tokens += num
            assert st.num_computed_tokens <= len(st.token_ids)
            assert len(st.block_ids) * BS >= st.num_computed_tokens, "KV slots missing"
            assert len(st.block_ids) == len(set(st.block_ids))
            req_ids.append(req_id)
            if st.num_computed_tokens == len(st.token_ids):
                token = tokens.get(req_id, self.default_token)
                st.token_ids.append(token)
                sampled.append([token])
            else:
                sampled.append([])
        return ModelRunnerOutput(req_ids, sampled)


def check_invariants(sched: Scheduler, runner: FakeRunner | None = None) -> None:
    kv, pool = sched.kv, sched.kv.pool
    free_ids = pool.free_queue.block_ids()
    assert len(free_ids) == len(set(free_ids)) == kv.num_free_blocks
    holders = [0] * kv.num_blocks
    for blocks in kv.req_to_blocks.values():
        for b in blocks:
            holders[b.block_id] += 1
    assert [b.ref_cnt for b in pool.blocks] == holders
    assert all((b.ref_cnt == 0) == (b.block_id in free_ids) for b in pool.blocks)
    for block_hash, block in pool.cached.items():
        assert block.block_hash == block_hash
    running_ids = {r.request_id for r in sched.running}
    # Only running requests hold blocks; waiting (and preempted) ones hold none.
    assert set(kv.req_to_blocks) == running_ids
    assert all(r.status == RequestStatus.RUNNING for r in sched.running)
    assert all(r.status in (RequestStatus.WAITING, RequestStatus.PREEMPTED) for r in sched.waiting)
    assert set(sched.requests) == running_ids | {r.request_id for r in sched.waiting}
    assert len(sched.running) <= sched.config.max_num_seqs
    for r in sched.running:
        assert len(kv.get_block_ids(r.request_id)) * BS >= r.num_computed_tokens
        if runner is not None and r.request_id in runner.state:
            assert runner.state[r.request_id].block_ids == kv.get_block_ids(r.request_id)


def assert_no_leaks(sched: Scheduler) -> None:
    check_invariants(sched)
    assert not sched.has_unfinished_requests()
    assert sched.kv.num_free_blocks == sched.kv.num_blocks
    assert sched.kv.req_to_blocks == {} and sched.requests == {}
    assert all(b.ref_cnt == 0 for b in sched.kv.pool.blocks)


def step(
    sched: Scheduler, runner: FakeRunner, tokens: dict[str, int] | None = None
) -> tuple[SchedulerOutput, dict[str, EngineCoreOutput]]:
    out = sched.schedule()
    check_invariants(sched)  # the runner has not seen this step's blocks yet
    results = sched.update_from_output(out, runner.execute(out, tokens))
    check_invariants(sched, runner)
    by_id = {r.req_id: r for r in results}
    assert len(by_id) == len(results)
    return out, by_id


def run_to_completion(sched: Scheduler, runner: FakeRunner, max_steps: int = 200) -> dict[str, list[EngineCoreOutput]]:
    history: dict[str, list[EngineCoreOutput]] = {}
    for _ in range(max_steps):
        if not sched.has_unfinished_requests():
            return history
        _, results = step(sched, runner)
        for req_id, r in results.items():
            history.setdefault(req_id, []).append(r)
    raise AssertionError("scheduler did not finish: requests hang")


def new_ids(out: SchedulerOutput) -> list[str]:
    return [n.req_id for n in out.scheduled_new_reqs]


# ---- no torch -------------------------------------------------------------------------


def test_scheduler_imports_without_torch():
    code = "import pagedlm.engine.scheduler, sys; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# ---- budget and chunked prefill -------------------------------------------------------


def test_long_prefill_threshold_lets_long_prompts_share_a_step():
    sched, runner = make_scheduler(budget=40, long_prefill_threshold=12), FakeRunner()
    sched.add_request(make_request("long", 30))
    sched.add_request(make_request("other", 20))
    sched.add_request(make_request("short", 5))
    out, results = step(sched, runner)
    # Each prompt takes at most 12 tokens; the budget (40) reaches all three.
    assert list(out.num_scheduled_tokens.items()) == [("long", 12), ("other", 12), ("short", 5)]
    assert set(results) == {"short"}
    out, results = step(sched, runner)
    assert list(out.num_scheduled_tokens.items()) == [("long", 12), ("other", 8), ("short", 1)]
    out, results = step(sched, runner)
    assert list(out.num_scheduled_tokens.items()) == [("long", 6), ("other", 1), ("short", 1)]
    assert set(results) == {"long", "other", "short"}
    sched.finish_requests(["long", "other", "short"], RequestStatus.FINISHED_ABORTED)
    assert_no_leaks(sched)


def test_budget_goes_to_decodes_first_then_prefill_chunks():
    sched, runner = make_scheduler(budget=10), FakeRunner()
    sched.add_request(make_request("a", 3))
    sched.add_request(make_request("b", 3))
    out, results = step(sched, runner)
    assert out.num_scheduled_tokens == {"a": 3, "b": 3}
    assert new_ids(out) == ["a", "b"] and set(results) == {"a", "b"}

    sched.add_request(make_request("c", 20))
    out, results = step(sched, runner)
    # Decodes first (in running order), the rest of the budget to c's first chunk.
    assert list(out.num_scheduled_tokens.items()) == [("a", 1), ("b", 1), ("c", 8)]
    assert out.total_num_scheduled_tokens == 10
    assert new_ids(out) == ["c"] and [c.req_id for c in out.scheduled_cached_reqs] == ["a", "b"]
    assert set(results) == {"a", "b"}  # c's prefill is partial: nothing sampled for it
    assert sched.requests["c"].num_computed_tokens == 8

    out, results = step(sched, runner)
    assert list(out.num_scheduled_tokens.items()) == [("a", 1), ("b", 1), ("c", 8)]
    assert set(results) == {"a", "b"}
    out, results = step(sched, runner)
    assert list(out.num_scheduled_tokens.items()) == [("a", 1), ("b", 1), ("c", 4)]
    assert set(results) == {"a", "b", "c"}
    out, _ = step(sched, runner)
    assert out.num_scheduled_tokens == {"a": 1, "b": 1, "c": 1}
    sched.finish_requests(["a", "b", "c"], RequestStatus.FINISHED_ABORTED)
    assert_no_leaks(sched)


def test_chunked_prefill_of_a_long_prompt_over_several_steps():
    sched, runner = make_scheduler(num_blocks=16, budget=8), FakeRunner()
    req = make_request("long", 21, max_tokens=2)
    sched.add_request(req)
    expected = [  # (scheduled, computed after, new block ids this step, sampled?)
        (8, 8, [0, 1], False),
        (8, 16, [2, 3], False),
        (5, 21, [4, 5], True),
    ]
    for i, (num, computed, blocks, sampled) in enumerate(expected):
        out, results = step(sched, runner, {"long": 40 + i})
        assert out.num_scheduled_tokens == {"long": num}
        assert req.num_computed_tokens == computed
        if i == 0:
            assert new_ids(out) == ["long"] and out.scheduled_new_reqs[0].block_ids == blocks
            assert out.scheduled_new_reqs[0].num_computed_tokens == 0
        else:
            (cached,) = out.scheduled_cached_reqs
            assert cached.new_block_ids == blocks and cached.num_computed_tokens == computed - num
        assert ("long" in results) is sampled
        assert sched.kv.num_free_blocks == 16 - (blocks[-1] + 1)
    assert results["long"].new_token_ids == [42] and req.output_token_ids == [42]
    assert results["long"].finish_reason is None
    # The prompt's 5 full blocks are cached as they fill (block 5 holds the 21st token only).
    assert [b.block_id for b in sched.kv.pool.cached.values()] == [0, 1, 2, 3, 4]
    out, results = step(sched, runner, {"long": 43})
    assert out.num_scheduled_tokens == {"long": 1} and out.scheduled_cached_reqs[0].new_block_ids == []
    assert results["long"].new_token_ids == [43] and results["long"].finish_reason == "length"
    assert_no_leaks(sched)
    assert sched.kv.pool.free_queue.block_ids()[-6:] == [5, 4, 3, 2, 1, 0]


def test_decode_allocates_a_new_block_only_at_block_boundaries():
    sched, runner = make_scheduler(num_blocks=8), FakeRunner()
    sched.add_request(make_request("r", 3, max_tokens=7))
    new_block_counts = []
    for _ in range(7):
        out, _ = step(sched, runner)
        if out.scheduled_new_reqs:
            new_block_counts.append(len(out.scheduled_new_reqs[0].block_ids))
        else:
            new_block_counts.append(len(out.scheduled_cached_reqs[0].new_block_ids))
    # Tokens computed per step: 3, 4, 5, 6, 7, 8, 9 -> blocks 1, +0, +1, +0, +0, +0, +1.
    assert new_block_counts == [1, 0, 1, 0, 0, 0, 1]
    assert_no_leaks(sched)


def test_max_num_seqs_caps_the_running_batch():
    sched, runner = make_scheduler(max_num_seqs=2), FakeRunner()
    for i, max_tokens in enumerate((1, 3, 3)):
        sched.add_request(make_request(f"r{i}", 3, max_tokens=max_tokens))
    out, results = step(sched, runner)
    assert new_ids(out) == ["r0", "r1"] and [r.request_id for r in sched.waiting] == ["r2"]
    assert results["r0"].finish_reason == "length"
    out, _ = step(sched, runner)  # r0 left: room for r2
    assert list(out.num_scheduled_tokens) == ["r1", "r2"] and new_ids(out) == ["r2"]
    assert out.finished_req_ids == {"r0"}
    stats = sched.stats()
    assert (stats.num_running_reqs, stats.num_waiting_reqs) == (2, 0)
    assert (stats.num_free_blocks, stats.num_total_blocks) == (62, 64)
    assert stats.kv_cache_usage == pytest.approx(2 / 64)
    assert sched.get_num_unfinished_requests() == 2
    run_to_completion(sched, runner)
    assert sched.stats().kv_cache_usage == 0.0
    assert_no_leaks(sched)


def test_fcfs_order_and_head_of_line():
    sched, runner = make_scheduler(budget=5), FakeRunner()
    sched.add_request(make_request("first", 8, max_tokens=1))
    sched.add_request(make_request("second", 2, max_tokens=1))
    out, _ = step(sched, runner)
    # The earlier request takes the whole budget; the later one waits.
    assert out.num_scheduled_tokens == {"first": 5}
    assert [r.request_id for r in sched.waiting] == ["second"]
    out, results = step(sched, runner)
    assert list(out.num_scheduled_tokens.items()) == [("first", 3), ("second", 2)]
    assert set(results) == {"first", "second"}
    assert_no_leaks(sched)


def test_waiting_head_that_does_not_fit_blocks_later_requests():
    sched, runner = make_scheduler(num_blocks=4), FakeRunner()
    sched.add_request(make_request("hog", 8, max_tokens=2))  # 2 blocks, then a third
    out, _ = step(sched, runner)
    sched.add_request(make_request("big", 8, max_tokens=1))  # needs 2 blocks
    sched.add_request(make_request("small", 1, max_tokens=1))
    out, _ = step(sched, runner)  # hog takes block 2: 1 free, big needs 2
    assert new_ids(out) == [] and [r.request_id for r in sched.waiting] == ["big", "small"]
    run_to_completion(sched, runner)
    assert_no_leaks(sched)


# ---- prefix caching through the scheduler ----------------------------------------------


def test_same_prompt_in_a_later_step_hits_the_cache():
    sched, runner = make_scheduler(num_blocks=10), FakeRunner()
    prompt = list(range(100, 110))  # 10 tokens: 2 full blocks + 2
    sched.add_request(make_request("a", prompt, max_tokens=3))
    out, results = step(sched, runner)
    assert out.scheduled_new_reqs[0].block_ids == [0, 1, 2]
    assert results["a"].num_cached_tokens == 0

    sched.add_request(make_request("b", prompt, max_tokens=3))
    out, results = step(sched, runner)
    (new,) = out.scheduled_new_reqs
    assert new.req_id == "b" and new.num_computed_tokens == 8 and new.block_ids == [0, 1, 3]
    assert out.num_scheduled_tokens == {"a": 1, "b": 2}
    assert results["b"].num_cached_tokens == 8
    assert [b.ref_cnt for b in sched.kv.pool.blocks[:4]] == [2, 2, 1, 1]
    stats = sched.stats()
    assert (stats.prefix_cache_queries_total, stats.prefix_cache_hits_total) == (20, 8)
    run_to_completion(sched, runner)
    assert_no_leaks(sched)


def test_identical_prompts_in_the_same_step_share_blocks():
    # Blocks are registered when allocated (they are full once the step runs), so a
    # request admitted later in the same step already hits them.
    sched, runner = make_scheduler(num_blocks=10), FakeRunner()
    prompt = list(range(9))
    sched.add_request(make_request("a", prompt, max_tokens=1))
    sched.add_request(make_request("b", prompt, max_tokens=1))
    out, results = step(sched, runner)
    assert out.num_scheduled_tokens == {"a": 9, "b": 1}
    assert [n.block_ids for n in out.scheduled_new_reqs] == [[0, 1, 2], [0, 1, 3]]
    assert results["b"].num_cached_tokens == 8
    assert_no_leaks(sched)


def test_prefix_caching_disabled_through_the_scheduler():
    sched, runner = make_scheduler(num_blocks=10, caching=False), FakeRunner()
    prompt = list(range(9))
    sched.add_request(make_request("a", prompt, max_tokens=1))
    step(sched, runner)
    sched.add_request(make_request("b", prompt, max_tokens=1))
    out, results = step(sched, runner)
    assert out.num_scheduled_tokens == {"b": 9} and out.scheduled_new_reqs[0].num_computed_tokens == 0
    assert results["b"].num_cached_tokens == 0
    assert sched.stats().prefix_cache_hits_total == 0
    assert_no_leaks(sched)


def test_prompt_logprobs_request_recomputes_the_whole_prompt():
    sched, runner = make_scheduler(num_blocks=10), FakeRunner()
    prompt = list(range(9))
    sched.add_request(make_request("a", prompt, max_tokens=1))
    step(sched, runner)
    sched.add_request(make_request("lp", prompt, max_tokens=1, prompt_logprobs=1))
    out, _ = step(sched, runner)
    assert out.num_scheduled_tokens == {"lp": 9} and out.scheduled_new_reqs[0].num_computed_tokens == 0
    assert_no_leaks(sched)


# ---- preemption ---------------------------------------------------------------------------


def test_preemption_newest_first_frees_blocks_and_resumes_with_outputs():
    sched, runner = make_scheduler(num_blocks=6), FakeRunner()
    sched.add_request(make_request("a", 8, max_tokens=2))
    sched.add_request(make_request("b", 8, max_tokens=5))
    sched.add_request(make_request("c", 8, max_tokens=5))
    out, _ = step(sched, runner, {"a": 11, "b": 21, "c": 31})
    assert [n.block_ids for n in out.scheduled_new_reqs] == [[0, 1], [2, 3], [4, 5]]
    assert sched.kv.num_free_blocks == 0

    sched.add_request(make_request("d", 1, max_tokens=1))
    # Each request's 9th token needs a third block; none is free: c, the newest, goes.
    out, results = step(sched, runner, {"a": 12, "b": 22})
    assert out.preempted_req_ids == {"c"}
    assert out.num_scheduled_tokens == {"a": 1, "b": 1}
    assert new_ids(out) == []  # nothing admitted in a step that preempted (d waits)
    c = sched.waiting[0]
    assert [r.request_id for r in sched.waiting] == ["c", "d"]
    assert c.request_id == "c" and c.status == RequestStatus.PREEMPTED
    assert c.num_computed_tokens == 0 and c.num_preemptions == 1 and c.output_token_ids == [31]
    assert sched.num_preemptions_total == 1 and sched.stats().num_preemptions_total == 1
    assert "c" not in sched.kv.req_to_blocks
    # c's blocks went back (tail first) and were handed to a and b: 5 to a, 4 to b.
    assert [x.new_block_ids for x in out.scheduled_cached_reqs] == [[5], [4]]
    assert results["a"].finish_reason == "length"  # a finishes: its 3 blocks come back
    assert sched.kv.pool.free_queue.block_ids() == [5, 1, 0]

    out, _ = step(sched, runner)
    (resumed,) = out.scheduled_new_reqs
    # c comes back as a new request, in full, with its output so far.
    assert resumed.req_id == "c" and resumed.output_token_ids == [31]
    assert resumed.prompt_token_ids == c.prompt_token_ids
    # Its cached blocks were handed to a and b (hashes evicted): all 9 tokens are recomputed.
    assert resumed.num_computed_tokens == 0 and out.num_scheduled_tokens["c"] == 9
    assert out.num_scheduled_tokens["b"] == 1
    assert [r.request_id for r in sched.waiting] == ["d"]
    history = run_to_completion(sched, runner)
    assert history["c"][-1].finish_reason == "length"
    assert c.num_output_tokens == 5 and c.output_token_ids[0] == 31
    assert_no_leaks(sched)


def test_preempted_request_revives_its_cached_blocks():
    sched, runner = make_scheduler(num_blocks=5), FakeRunner()
    sched.add_request(make_request("a", 8, max_tokens=2))
    sched.add_request(make_request("b", 8, max_tokens=3))
    out, _ = step(sched, runner, {"b": 51})
    assert [n.block_ids for n in out.scheduled_new_reqs] == [[0, 1], [2, 3]]
    out, results = step(sched, runner)  # a takes block 4; b finds none and yields
    assert out.preempted_req_ids == {"b"} and out.num_scheduled_tokens == {"a": 1}
    assert results["a"].finish_reason == "length"
    # b's blocks were freed tail first, still cached; then a's.
    assert sched.kv.pool.free_queue.block_ids() == [3, 2, 4, 1, 0]
    out, results = step(sched, runner)
    (resumed,) = out.scheduled_new_reqs
    # b's 8 prompt tokens come from its own (revived) blocks; only its output token is recomputed.
    assert resumed.req_id == "b" and resumed.num_computed_tokens == 8 and resumed.output_token_ids == [51]
    assert resumed.block_ids == [2, 3, 4] and out.num_scheduled_tokens == {"b": 1}
    assert sched.kv.pool.free_queue.block_ids() == [1, 0]
    assert "b" in results and results["b"].num_cached_tokens == 0  # counted at first scheduling
    stats = sched.stats()
    assert (stats.prefix_cache_queries_total, stats.prefix_cache_hits_total) == (8 + 8 + 9, 8)
    run_to_completion(sched, runner)
    assert_no_leaks(sched)


def test_request_that_is_newest_preempts_itself():
    sched, runner = make_scheduler(num_blocks=4), FakeRunner()
    sched.add_request(make_request("old", 4, max_tokens=4))  # 1 block, then 2
    sched.add_request(make_request("new", 8, max_tokens=4))  # 2 blocks, then 3
    out, _ = step(sched, runner)
    assert sched.kv.num_free_blocks == 1
    out, _ = step(sched, runner)  # old takes the last free block; new finds none and yields
    assert out.preempted_req_ids == {"new"} and out.num_scheduled_tokens == {"old": 1}
    assert [r.request_id for r in sched.running] == ["old"]
    assert [r.request_id for r in sched.waiting] == ["new"]
    run_to_completion(sched, runner)
    assert sched.num_preemptions_total >= 1
    assert_no_leaks(sched)


def test_preemption_order_with_several_victims():
    sched, runner = make_scheduler(num_blocks=4), FakeRunner()
    sched.add_request(make_request("a", 3, max_tokens=10))
    sched.add_request(make_request("b", 4, max_tokens=10))
    sched.add_request(make_request("c", 4, max_tokens=10))
    sched.add_request(make_request("d", 4, max_tokens=10))
    step(sched, runner)
    assert sched.kv.num_free_blocks == 0
    # a's 4th token fits its block; b, c, d each need a second one.
    out, _ = step(sched, runner)
    # b needs a block: d (newest) goes, b takes it; c needs one: c is the newest, goes.
    assert out.preempted_req_ids == {"c", "d"}
    assert [r.request_id for r in sched.waiting] == ["c", "d"]  # FCFS kept at the front
    assert out.num_scheduled_tokens == {"a": 1, "b": 1}
    run_to_completion(sched, runner)
    assert_no_leaks(sched)


# ---- requests that can never fit --------------------------------------------------------


def test_prompt_larger_than_the_pool_errors_and_others_are_served():
    sched, runner = make_scheduler(num_blocks=4), FakeRunner()  # 16 token slots
    sched.add_request(make_request("huge", 20, max_tokens=2))
    sched.add_request(make_request("ok", 3, max_tokens=2))
    out, results = step(sched, runner)
    assert results["huge"].finish_reason == "error" and results["huge"].error
    assert results["huge"].new_token_ids == []
    assert new_ids(out) == ["ok"]
    out, results = step(sched, runner)
    assert results["ok"].finish_reason == "length"
    assert_no_leaks(sched)


def test_unfittable_prompt_behind_a_running_request_does_not_hang():
    sched, runner = make_scheduler(num_blocks=4), FakeRunner()
    sched.add_request(make_request("ok", 3, max_tokens=3))
    step(sched, runner)
    sched.add_request(make_request("huge", 17, max_tokens=2))
    sched.add_request(make_request("after", 3, max_tokens=1))
    history = run_to_completion(sched, runner)
    assert history["huge"][-1].finish_reason == "error"
    assert history["ok"][-1].finish_reason == "length"
    assert history["after"][-1].finish_reason == "length"
    assert_no_leaks(sched)


def test_request_outgrowing_the_pool_while_decoding_errors():
    # max_model_len allows more than the pool holds: the request fits at first; once its
    # next token would need a block beyond the pool it errors, without preempting anyone.
    sched, runner = make_scheduler(num_blocks=4, max_model_len=64), FakeRunner()
    req = make_request("grow", 14, max_tokens=10)
    sched.add_request(req)
    history = run_to_completion(sched, runner)
    finals = history["grow"]
    assert finals[-1].finish_reason == "error"
    # Tokens 15, 16, 17 are sampled; computing the 17th needs a 5th block that does not exist.
    assert sum(len(o.new_token_ids) for o in finals) == 3
    assert [o.finish_reason for o in finals] == [None, None, None, "error"]
    assert req.num_preemptions == 0
    assert_no_leaks(sched)


# A request larger than the whole pool must finish with an error even when each chunk
# fits on its own (caching off, prompt_logprobs skipping the cache, a partial last block),
# instead of being admitted, preempting itself and being re-admitted forever.
@pytest.mark.parametrize(
    "caching, extra, budget, prompt_len",
    [(False, {}, 8, 20), (True, {"prompt_logprobs": 1}, 8, 20), (True, {}, 3, 18)],
    ids=["no-cache", "prompt-logprobs", "cache-partial-block"],
)
def test_unfittable_chunked_prompt_errors(caching, extra, budget, prompt_len):
    sched, runner = make_scheduler(num_blocks=4, budget=budget, caching=caching), FakeRunner()  # 16 slots
    sched.add_request(make_request("huge", prompt_len, max_tokens=2, **extra))
    sched.add_request(make_request("ok", 3, max_tokens=2))
    history = run_to_completion(sched, runner, max_steps=40)
    assert history["huge"][-1].finish_reason == "error"
    assert history["ok"][-1].finish_reason == "length"
    assert_no_leaks(sched)


def test_request_outgrowing_the_pool_without_prefix_cache_errors():
    # The same, through decoding: 14 + 3 tokens need a 5th block; without the cache
    # the recompute is chunked by the budget (8), its first chunk fits, and it loops.
    sched, runner = make_scheduler(num_blocks=4, budget=8, max_model_len=64, caching=False), FakeRunner()
    sched.add_request(make_request("grow", 14, max_tokens=10))
    history = run_to_completion(sched, runner, max_steps=40)
    assert history["grow"][-1].finish_reason == "error"
    assert_no_leaks(sched)


# ---- stop conditions ----------------------------------------------------------------------


def drive(sched: Scheduler, runner: FakeRunner, req_id: str, tokens: list[int]) -> list[EngineCoreOutput]:
    """Feed the given sampled tokens one per step until the request finishes."""
    outs = []
    for token in tokens:
        _, results = step(sched, runner, {req_id: token})
        outs.append(results[req_id])
        if results[req_id].finished:
            break
    return outs


def test_eos_stops_with_no_stop_reason():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(make_request("r", 3))
    outs = drive(sched, runner, "r", [5, 6, EOS, 9])
    assert [o.new_token_ids for o in outs] == [[5], [6], [EOS]]
    assert outs[-1].finish_reason == "stop" and outs[-1].stop_reason is None
    assert [o.finish_reason for o in outs[:-1]] == [None, None]
    assert_no_leaks(sched)


def test_stop_token_ids_stop_with_that_id_as_reason():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(make_request("r", 3, stop_token_ids=[42, 43]))
    outs = drive(sched, runner, "r", [5, 43, 9])
    assert outs[-1].new_token_ids == [43] and len(outs) == 2
    assert outs[-1].finish_reason == "stop" and outs[-1].stop_reason == 43
    assert_no_leaks(sched)


def test_min_tokens_suppresses_eos_and_stop_ids():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(make_request("r", 3, min_tokens=3, stop_token_ids=[42]))
    outs = drive(sched, runner, "r", [EOS, 42, EOS, 9])
    assert len(outs) == 3 and outs[-1].finish_reason == "stop" and outs[-1].stop_reason is None
    assert [o.finish_reason for o in outs[:2]] == [None, None]
    sched.add_request(make_request("s", 3, min_tokens=2, stop_token_ids=[42]))
    outs = drive(sched, runner, "s", [42, 42, 9])
    assert len(outs) == 2 and outs[-1].stop_reason == 42
    assert_no_leaks(sched)


def test_ignore_eos_runs_to_max_tokens():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(make_request("r", 3, ignore_eos=True, max_tokens=4))
    outs = drive(sched, runner, "r", [EOS] * 6)
    assert len(outs) == 4 and outs[-1].finish_reason == "length"
    assert sum((o.new_token_ids for o in outs), []) == [EOS] * 4
    assert_no_leaks(sched)


def test_ignore_eos_still_honours_stop_token_ids():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(make_request("r", 3, ignore_eos=True, stop_token_ids=[42]))
    outs = drive(sched, runner, "r", [EOS, 42, 9])
    assert len(outs) == 2 and outs[-1].stop_reason == 42 and outs[-1].finish_reason == "stop"
    assert_no_leaks(sched)


def test_max_tokens_gives_length():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(make_request("r", 3, max_tokens=3))
    outs = drive(sched, runner, "r", [5, 6, 7, 8])
    assert len(outs) == 3 and outs[-1].finish_reason == "length" and outs[-1].stop_reason is None
    assert_no_leaks(sched)


def test_eos_as_the_last_allowed_token_reports_stop():
    # The model did stop: eos wins over the length cap on the same token.
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(make_request("r", 3, max_tokens=2))
    outs = drive(sched, runner, "r", [5, EOS])
    assert outs[-1].finish_reason == "stop"
    assert_no_leaks(sched)


def test_several_tokens_in_one_step_are_cut_at_the_stop_token():
    # A step may return more than one token per request (speculative decoding): tokens after
    # the one that finishes the request are dropped.
    sched, runner = make_scheduler(), FakeRunner()
    req = make_request("r", 3)
    sched.add_request(req)
    step(sched, runner, {"r": 5})
    out = sched.schedule()
    results = sched.update_from_output(out, ModelRunnerOutput(["r"], [[6, EOS, 9, 10]]))
    assert [(o.new_token_ids, o.finish_reason) for o in results] == [([6, EOS], "stop")]
    assert req.output_token_ids == [5, 6, EOS]
    sched2, runner2 = make_scheduler(), FakeRunner()
    req2 = make_request("q", 3, max_tokens=3)
    sched2.add_request(req2)
    step(sched2, runner2, {"q": 5})
    out = sched2.schedule()
    results = sched2.update_from_output(out, ModelRunnerOutput(["q"], [[6, 7, 8]]))
    assert [(o.new_token_ids, o.finish_reason) for o in results] == [([6, 7], "length")]
    assert_no_leaks(sched)
    assert_no_leaks(sched2)


def test_max_model_len_gives_length():
    sched, runner = make_scheduler(max_model_len=8), FakeRunner()
    req = make_request("r", 5, max_tokens=None)
    sched.add_request(req)
    outs = drive(sched, runner, "r", [5, 6, 7, 8, 9])
    assert len(outs) == 3 and outs[-1].finish_reason == "length"
    assert req.num_tokens == 8
    assert_no_leaks(sched)


# ---- aborts -------------------------------------------------------------------------------


def test_abort_from_waiting_and_running_frees_blocks_and_reports_ids():
    sched, runner = make_scheduler(num_blocks=8, max_num_seqs=1), FakeRunner()
    sched.add_request(make_request("run", 6))
    sched.add_request(make_request("wait", 6))
    step(sched, runner)
    assert sched.kv.num_free_blocks == 6 and [r.request_id for r in sched.waiting] == ["wait"]

    sched.finish_requests(["wait"], RequestStatus.FINISHED_ABORTED)
    assert [r.request_id for r in sched.waiting] == [] and sched.kv.num_free_blocks == 6
    check_invariants(sched, runner)
    out, _ = step(sched, runner)
    assert out.finished_req_ids == {"wait"}

    sched.finish_requests(["run"], RequestStatus.FINISHED_ABORTED)
    assert sched.kv.num_free_blocks == 8 and sched.running == []
    sched.finish_requests(["run", "nope"], RequestStatus.FINISHED_ABORTED)  # no-op
    out = sched.schedule()
    assert out.finished_req_ids == {"run"} and out.total_num_scheduled_tokens == 0
    assert sched.schedule().finished_req_ids == set()  # reported once
    assert_no_leaks(sched)


def test_abort_while_the_step_runs_drops_its_output():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(make_request("r", 5))
    sched.add_request(make_request("s", 5, max_tokens=2))
    out = sched.schedule()
    runner_out = runner.execute(out)
    sched.finish_requests(["r"], RequestStatus.FINISHED_ABORTED)
    results = sched.update_from_output(out, runner_out)
    assert [o.req_id for o in results] == ["s"]
    check_invariants(sched)
    out, _ = step(sched, runner)
    assert "r" in out.finished_req_ids
    assert_no_leaks(sched)


def test_abort_of_a_preempted_request():
    sched, runner = make_scheduler(num_blocks=4), FakeRunner()
    sched.add_request(make_request("old", 4, max_tokens=4))
    sched.add_request(make_request("new", 8, max_tokens=4))
    step(sched, runner)
    out, _ = step(sched, runner)
    assert out.preempted_req_ids == {"new"}
    sched.finish_requests(["new"], RequestStatus.FINISHED_ABORTED)
    assert list(sched.waiting) == [] and sched.kv.num_free_blocks == 2  # old holds 2
    out, _ = step(sched, runner)
    assert "new" in out.finished_req_ids
    run_to_completion(sched, runner)
    assert_no_leaks(sched)


def test_stop_from_frontend_finishes_a_running_request():
    sched, runner = make_scheduler(), FakeRunner()
    sched.add_request(make_request("r", 5))
    step(sched, runner)
    sched.finish_requests(["r"], RequestStatus.FINISHED_STOPPED)
    assert_no_leaks(sched)


# ---- a mixed workload -----------------------------------------------------------------------


@pytest.mark.parametrize("num_blocks", [6, 9, 40])
def test_mixed_workload_finishes_without_leaks(num_blocks):
    sched, runner = make_scheduler(num_blocks=num_blocks, budget=12, max_num_seqs=4), FakeRunner()
    shared = list(range(500, 508))
    specs = [("p0", shared + [1, 2, 3], 6), ("p1", 5, 9), ("p2", shared + [4], 4), ("p3", 13, 3),
             ("p4", shared + [1, 2, 3], 7), ("p5", 2, 12), ("p6", 9, 5)]
    for req_id, prompt, max_tokens in specs:
        sched.add_request(make_request(req_id, prompt, max_tokens=max_tokens))
    history = run_to_completion(sched, runner)
    assert set(history) == {s[0] for s in specs}
    for req_id, _, max_tokens in specs:
        assert history[req_id][-1].finish_reason == "length"
        assert sum(len(o.new_token_ids) for o in history[req_id]) == max_tokens
    assert_no_leaks(sched)


def _random_workload(seed: int) -> None:
    import random

    rng = random.Random(seed)
    num_blocks = rng.randint(3, 12)
    # The engine refuses to start unless one max_model_len sequence fits the pool.
    max_model_len = num_blocks * BS - rng.randint(0, 3)
    sched = make_scheduler(num_blocks=num_blocks, budget=rng.randint(1, 20), max_num_seqs=rng.randint(1, 5),
                           max_model_len=max_model_len, caching=rng.random() < 0.7)
    runner = FakeRunner()
    prefixes = [[rng.randint(10, 14) for _ in range(rng.randint(0, 10))] for _ in range(3)]
    added, finished = set(), set()
    for _ in range(400):
        if len(added) < 12 and rng.random() < 0.3:
            num_prompt = rng.randint(1, max_model_len - 1)
            prompt = (rng.choice(prefixes) + [rng.randint(10, 14) for _ in range(num_prompt)])[:num_prompt]
            extra = {"prompt_logprobs": 1} if rng.random() < 0.1 else {}
            req_id = f"r{len(added)}"
            sched.add_request(make_request(req_id, prompt, max_tokens=rng.randint(1, 12), **extra))
            added.add(req_id)
        if sched.requests and rng.random() < 0.05:
            req_id = rng.choice(sorted(sched.requests))
            sched.finish_requests([req_id], RequestStatus.FINISHED_ABORTED)
            finished.add(req_id)
            check_invariants(sched)
        if not sched.has_unfinished_requests():
            if len(added) == 12:
                break
            continue
        tokens = {r: EOS if rng.random() < 0.05 else rng.randint(10, 14) for r in sched.requests}
        _, results = step(sched, runner, tokens)
        finished |= {r for r, o in results.items() if o.finished}
    assert finished == added, f"seed {seed}: unfinished {sorted(added - finished)}"
    assert_no_leaks(sched)


def test_random_workloads_keep_invariants_and_finish():
    """Small pools, budgets and batch caps, shared prefixes, aborts, random eos: block
    tables, ref counts and the free queue stay consistent every step; all requests finish."""
    for seed in range(120):
        _random_workload(seed)


# ---- priority scheduling (--scheduling-policy priority) --------------------------------


def test_priority_orders_waiting_requests_then_by_arrival():
    sched, runner = make_scheduler(max_num_seqs=1, policy="priority"), FakeRunner()
    for req_id, priority, arrival in [("a", 5, 1.0), ("b", 0, 2.0), ("c", 1, 3.0), ("d", 0, 4.0), ("e", 0, 0.5)]:
        sched.add_request(make_request(req_id, 4, max_tokens=1, priority=priority, arrival=arrival))
    order = []
    while sched.has_unfinished_requests():
        out, _ = step(sched, runner)
        order += new_ids(out)
    # Lowest value first; equal priorities by arrival (e arrived before b and d).
    assert order == ["e", "b", "d", "c", "a"]
    assert_no_leaks(sched)
    # The same requests under fcfs: arrival order of add_request, whatever their priority.
    sched, runner = make_scheduler(max_num_seqs=1), FakeRunner()
    for req_id in "abc":
        sched.add_request(make_request(req_id, 4, max_tokens=1, priority={"a": 5, "b": 0, "c": 1}[req_id]))
    order = []
    while sched.has_unfinished_requests():
        order += new_ids(step(sched, runner)[0])
    assert order == ["a", "b", "c"]


@pytest.mark.parametrize("policy,victim,scheduled", [("priority", "a", {"b": 1, "c": 1}),
                                                     ("fcfs", "c", {"a": 1, "b": 1})])
def test_priority_preempts_the_lowest_priority_request_not_the_newest(policy: str, victim: str, scheduled: dict):
    # a (priority 2) runs alone, then b and c (priority 1) join and fill the pool. When b needs
    # a block, fcfs gives up the newest (c); the priority policy gives up a, which also gets
    # its budget last (the running list is kept in priority order), and a resumes after them.
    sched, runner = make_scheduler(num_blocks=6, policy=policy), FakeRunner()
    sched.add_request(make_request("a", 6, max_tokens=5, priority=2, arrival=1.0))
    step(sched, runner)
    sched.add_request(make_request("b", 8, max_tokens=5, priority=1, arrival=2.0))
    sched.add_request(make_request("c", 8, max_tokens=5, priority=1, arrival=3.0))
    out, _ = step(sched, runner)
    assert new_ids(out) == ["b", "c"] and sched.kv.num_free_blocks == 0
    assert [r.request_id for r in sched.running] == (["b", "c", "a"] if policy == "priority" else ["a", "b", "c"])
    out, _ = step(sched, runner)
    assert out.preempted_req_ids == {victim}
    assert out.num_scheduled_tokens == scheduled
    sched.add_request(make_request("d", 1, max_tokens=1, priority=0, arrival=4.0))
    # Waiting: under priority d (priority 0) goes ahead of the preempted a; under fcfs the
    # preempted request keeps the front.
    assert [r.request_id for r in sched.waiting] == (["d", "a"] if policy == "priority" else ["c", "d"])
    history = run_to_completion(sched, runner)
    assert all(history[r][-1].finish_reason == "length" for r in "abcd")
    assert_no_leaks(sched)


def test_without_chunked_prefill_a_prompt_waits_for_a_step_that_holds_it_whole():
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=16, max_model_len=16,
                                      enable_chunked_prefill=False), CacheConfig(block_size=BS), 64)
    runner = FakeRunner()
    sched.add_request(make_request("a", 4, max_tokens=3))
    sched.add_request(make_request("b", 16, max_tokens=1))
    steps = []
    while sched.has_unfinished_requests():
        steps.append(step(sched, runner)[0].num_scheduled_tokens)
    # b needs the whole budget: it waits while a decodes (chunked prefill would give it 12, then 4).
    assert steps == [{"a": 4}, {"a": 1}, {"a": 1}, {"b": 16}]
    assert_no_leaks(sched)


def test_long_prefill_threshold_leaves_greedy_output_as_it_is(llama_checkpoint):
    from pagedlm import LLM

    prompts = [{"prompt_token_ids": [(i * 31) % 400 + 5 for i in range(70)]}, {"prompt_token_ids": [9, 8, 7]}]
    params = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    ids = [[o.outputs[0].token_ids for o in LLM(llama_checkpoint, device="cpu", max_model_len=128, **kw)
            .generate(prompts, params, use_tqdm=False)] for kw in ({}, {"long_prefill_token_threshold": 16})]
    assert ids[0] == ids[1]


def test_long_prefill_threshold_needs_chunked_prefill(llama_checkpoint):
    from pagedlm.config import ConfigError
    from pagedlm.engine_args import EngineArgs

    for bad, needle in [({"enable_chunked_prefill": False}, "needs chunked prefill"), ({}, "non-negative")]:
        threshold = -1 if needle == "non-negative" else 8
        with pytest.raises(ConfigError, match=needle):
            EngineArgs(model=llama_checkpoint, device="cpu", long_prefill_token_threshold=threshold,
                       **bad).create_engine_config()
