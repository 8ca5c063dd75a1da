"""Speculative decoding in the pure scheduler and KV manager: drafts in the token budget,
lookahead slots, rollback of rejected drafts (num_computed_tokens, block tails, ref counts,
hashes), with a fake runner that keeps its block tables only from SchedulerOutput messages
and applies the same rollback rule as the real runner."""

from __future__ import annotations

from dataclasses import dataclass, field

from test_scheduler import BS, EOS, assert_no_leaks, check_invariants, make_request

from pagedlm.config import CacheConfig, SchedulerConfig
from pagedlm.engine.kv_cache import hash_block_tokens
from pagedlm.engine.messages import ModelRunnerOutput, SchedulerOutput
from pagedlm.engine.request import RequestStatus
from pagedlm.engine.scheduler import Scheduler


def make_spec_scheduler(num_blocks: int = 64, *, k: int = 3, lookahead: int = 0, budget: int = 64,
                        max_model_len: int = 256, caching: bool = True, pause_at: int | None = None) -> Scheduler:
    return Scheduler(
        SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=budget, max_model_len=max_model_len,
                        num_spec_tokens=k, num_lookahead_tokens=lookahead, spec_disable_by_batch_size=pause_at),
        CacheConfig(block_size=BS, enable_prefix_caching=caching), num_blocks)


@dataclass
class SpecFakeRunner:
    """Emits ``accept`` of each request's drafts plus one token, and proposes ``drafts``."""

    accept: int = 0
    drafts: list[int] = field(default_factory=lambda: [900, 901, 902])
    block_ids: dict[str, list[int]] = field(default_factory=dict)
    seen_spec: list[dict[str, list[int]]] = field(default_factory=list)
    next_token: int = 500

    def execute(self, out: SchedulerOutput) -> ModelRunnerOutput:
        for req_id in out.finished_req_ids | out.preempted_req_ids:
            self.block_ids.pop(req_id, None)
        for new in out.scheduled_new_reqs:
            self.block_ids[new.req_id] = list(new.block_ids)
        for cached in out.scheduled_cached_reqs:  # the runner's rollback rule
            blocks = self.block_ids[cached.req_id]
            del blocks[-(-cached.num_computed_tokens // BS):]
            blocks += cached.new_block_ids
        self.seen_spec.append(dict(out.scheduled_spec_decode_tokens))
        req_ids, sampled, spec = [], [], {}
        for req_id, num in out.num_scheduled_tokens.items():
            drafts = out.scheduled_spec_decode_tokens.get(req_id, [])
            req_ids.append(req_id)
            n = min(self.accept, len(drafts))
            self.next_token += 1
            sampled.append(drafts[:n] + [self.next_token])
            spec[req_id] = list(self.drafts)
        return ModelRunnerOutput(req_ids, sampled, spec_token_ids=spec)


def spec_step(sched: Scheduler, runner: SpecFakeRunner) -> tuple[SchedulerOutput, list]:
    out = sched.schedule()
    check_invariants(sched)
    results = sched.update_from_output(out, runner.execute(out))
    check_invariants(sched)
    for r in sched.running:  # the runner's tables equal the manager's after the next rollback
        blocks = runner.block_ids[r.request_id][: -(-r.num_computed_tokens // BS)]
        assert blocks == sched.kv.get_block_ids(r.request_id)[: len(blocks)]
    return out, results


def test_drafts_are_scheduled_verified_and_rejected_ones_rolled_back():
    sched, runner = make_spec_scheduler(k=3), SpecFakeRunner(accept=1)
    req = make_request("r", 6)  # 6 prompt tokens: blocks of 4 -> 2 blocks
    sched.add_request(req)
    out, _ = spec_step(sched, runner)  # prefill; samples one token, proposes 3 drafts
    assert out.scheduled_spec_decode_tokens == {} and req.spec_token_ids == [900, 901, 902]
    assert req.num_computed_tokens == 6 and req.num_tokens == 7
    out, results = spec_step(sched, runner)  # verify: 1 + 3 tokens, 1 draft accepted
    assert out.num_scheduled_tokens == {"r": 4}
    assert out.scheduled_spec_decode_tokens == {"r": [900, 901, 902]}
    assert results[0].new_token_ids == [900, 502]
    # 7 + 2 tokens; the bonus token (502) is not computed yet; 2 rejected drafts rolled back
    assert req.num_tokens == 9 and req.num_computed_tokens == 8
    assert len(sched.kv.get_block_ids("r")) == 2  # the block that held only rejected drafts is free
    assert sched.spec_stats.snapshot() == {"num_drafts": 1, "num_draft_tokens": 3, "num_accepted_tokens": 1,
                                           "accepted_per_pos": [1, 0, 0]}
    sched.finish_requests(["r"], req.status.FINISHED_ABORTED)
    assert_no_leaks(sched)


def test_hashes_cover_accepted_tokens_only():
    sched, runner = make_spec_scheduler(k=3), SpecFakeRunner(accept=0)
    req = make_request("r", 3)
    sched.add_request(req)
    spec_step(sched, runner)  # prompt 3 + sampled 1 = 4 tokens; 3 computed
    spec_step(sched, runner)  # verify 4 positions (1 + 3 drafts) into slots 3..6; none accepted
    tokens = req.all_token_ids
    assert len(tokens) == 5 and req.num_computed_tokens == 4
    blocks = sched.kv.req_to_blocks["r"]
    assert blocks[0].block_hash == hash_block_tokens(None, tokens[:4])  # full of accepted tokens
    assert len(blocks) == 1  # the second block (drafts only) went back, unhashed
    assert all(b.block_hash is None for b in sched.kv.pool.blocks if b is not blocks[0])
    assert set(sched.kv.pool.cached) == {blocks[0].block_hash}


def test_shared_prefix_blocks_keep_their_ref_counts_through_rollback():
    sched, runner = make_spec_scheduler(k=3), SpecFakeRunner(accept=0)
    prompt = list(range(100, 109))  # 2 full blocks + 1 token
    sched.add_request(make_request("a", prompt))
    spec_step(sched, runner)
    sched.add_request(make_request("b", prompt))
    spec_step(sched, runner)  # b hits a's two full blocks
    shared = sched.kv.req_to_blocks["a"][:2]
    assert sched.kv.req_to_blocks["b"][:2] == shared and all(b.ref_cnt == 2 for b in shared)
    for _ in range(3):
        spec_step(sched, runner)  # rejected drafts roll back tails, never the shared blocks
        assert all(b.ref_cnt == 2 for b in shared)
    sched.finish_requests(["a", "b"], sched.requests["a"].status.FINISHED_ABORTED)
    assert_no_leaks(sched)


def test_lookahead_slots_are_allocated_then_freed():
    sched, runner = make_spec_scheduler(k=3, lookahead=3), SpecFakeRunner(accept=3)
    req = make_request("r", 4)
    sched.add_request(req)
    out = sched.schedule()
    # 4 prompt tokens + 3 lookahead slots for drafting after the step -> 2 blocks
    assert len(out.scheduled_new_reqs[0].block_ids) == 2
    sched.update_from_output(out, runner.execute(out))
    assert len(sched.kv.get_block_ids("r")) == 1  # back to the computed tokens' blocks
    for _ in range(4):
        spec_step(sched, runner)  # all accepted: 4 tokens per step
    assert req.num_output_tokens == 1 + 4 * 4
    sched.finish_requests(["r"], req.status.FINISHED_ABORTED)
    assert_no_leaks(sched)


def test_budget_cuts_drafts_and_max_tokens_caps_them():
    sched, runner = make_spec_scheduler(k=3, budget=3), SpecFakeRunner(accept=3)
    req = make_request("r", 2, max_tokens=4)
    sched.add_request(req)
    spec_step(sched, runner)
    assert req.spec_token_ids == [900, 901]  # 3 more tokens allowed: 2 drafts + the bonus
    out, results = spec_step(sched, runner)
    assert out.scheduled_spec_decode_tokens == {"r": [900, 901]}
    assert results[0].new_token_ids == [900, 901, runner.next_token] and results[0].finish_reason == "length"
    assert_no_leaks(sched)
    sched2, runner2 = make_spec_scheduler(k=3, budget=2), SpecFakeRunner(accept=3)
    sched2.add_request(make_request("q", 2))
    spec_step(sched2, runner2)
    out, _ = spec_step(sched2, runner2)
    assert out.scheduled_spec_decode_tokens == {"q": [900]}  # budget 2: last token + 1 draft


def test_stop_inside_accepted_drafts_and_preemption_drop_drafts():
    sched, runner = make_spec_scheduler(k=3), SpecFakeRunner(accept=3, drafts=[900, EOS, 902])
    sched.add_request(make_request("r", 3))
    spec_step(sched, runner)
    _, results = spec_step(sched, runner)
    assert results[0].new_token_ids == [900, EOS] and results[0].finish_reason == "stop"
    assert_no_leaks(sched)
    # Preemption: few blocks, two requests; the preempted one forgets its drafts.
    sched, runner = make_spec_scheduler(num_blocks=5, k=3), SpecFakeRunner(accept=0)
    sched.add_request(make_request("a", 7))
    sched.add_request(make_request("b", 7))
    spec_step(sched, runner)
    out, _ = spec_step(sched, runner)
    assert out.preempted_req_ids == {"b"} and sched.requests["b"].spec_token_ids == []
    while sched.has_unfinished_requests():
        if len(runner.seen_spec) > 200:
            raise AssertionError("hangs")
        spec_step(sched, runner)
        for r in list(sched.running):
            if r.num_output_tokens >= 6:
                sched.finish_requests([r.request_id], r.status.FINISHED_ABORTED)
    assert_no_leaks(sched)


def test_disable_by_batch_size_drops_drafts_while_that_many_run():
    """A step with disable_by_batch_size running requests verifies no drafts (the proposer's
    drafts are dropped, no budget or blocks spent on them); with fewer, drafts return."""
    sched, runner = make_spec_scheduler(k=3, lookahead=3, pause_at=2), SpecFakeRunner(accept=1)
    for name in ("a", "b"):
        sched.add_request(make_request(name, 6))
    spec_step(sched, runner)  # prefills; the runner proposes for both
    out, _ = spec_step(sched, runner)
    assert out.scheduled_spec_decode_tokens == {} and out.num_scheduled_tokens == {"a": 1, "b": 1}
    assert all(r.spec_token_ids == [900, 901, 902] for r in sched.running)  # proposed again after the step
    sched.finish_requests(["b"], RequestStatus.FINISHED_ABORTED)
    out, _ = spec_step(sched, runner)
    assert out.scheduled_spec_decode_tokens == {"a": [900, 901, 902]} and out.num_scheduled_tokens == {"a": 4}
    sched.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    spec_step(sched, runner)
    assert_no_leaks(sched)


def test_async_verify_waits_for_its_output_and_survives_preemption_in_flight():
    """Async scheduling: a request whose verify step is in flight is not scheduled again
    until its output is back; if a later step preempts it meanwhile, the output's tokens
    still land and no rollback runs on its reset computed count."""
    sched, runner = make_spec_scheduler(k=3), SpecFakeRunner(accept=1)
    req = make_request("r", 6, max_tokens=12)
    sched.add_request(req)
    spec_step(sched, runner)  # prefill; drafts proposed
    out_n = sched.schedule()  # verify 1 + 3 tokens
    assert out_n.scheduled_spec_decode_tokens == {"r": [900, 901, 902]}
    res_n = runner.execute(out_n)
    assert sched.schedule().num_scheduled_tokens == {}  # step N+1: nothing for r before step N is back
    sched.running.remove(req)
    sched._preempt(req)  # as a step N+1 short of blocks would (async: step N still in flight)
    sched.update_from_output(out_n, res_n)
    assert req.status == RequestStatus.PREEMPTED and req.num_computed_tokens == 0
    assert req.output_token_ids[-2:] == [900, res_n.sampled_token_ids[0][-1]]
    check_invariants(sched)
    for _ in range(20):
        if not sched.has_unfinished_requests():
            break
        spec_step(sched, runner)
    assert req.num_output_tokens == 12
    assert_no_leaks(sched)


def _runner_tables(tables: dict[str, list[int]], out: SchedulerOutput) -> None:
    """The real runner's block tables after receiving ``out`` (its rollback rule)."""
    for new in out.scheduled_new_reqs:
        tables[new.req_id] = list(new.block_ids)
    for cached in out.scheduled_cached_reqs:
        del tables[cached.req_id][-(-cached.num_computed_tokens // BS):]
        tables[cached.req_id] += cached.new_block_ids


def _launch(sched: Scheduler, tables: dict[str, list[int]]) -> SchedulerOutput:
    out = sched.schedule()
    check_invariants(sched)
    _runner_tables(tables, out)
    for req_id in out.num_scheduled_tokens:  # the runner and the manager agree on every block
        assert tables[req_id] == sched.kv.get_block_ids(req_id)
    return out


def test_async_no_draft_request_runs_ahead_and_a_drafted_one_waits():
    """Async scheduling with speculation: a request whose step in flight carries no drafts
    and whose latest proposal was empty is scheduled again at once (a plain decode); one
    whose step verifies drafts, or that has not been proposed for yet, is not; a proposal
    that comes back while a later step of the request is in flight is stale (dropped, and
    the request waits for that step); the next proposal drives a verify step. Block tables
    (with proposer lookahead) stay in step with the runner's."""
    sched, tables = make_spec_scheduler(k=3, lookahead=3), {}
    a, b = make_request("a", 6, max_tokens=30), make_request("b", 6, max_tokens=30)
    sched.add_request(a)
    sched.add_request(b)
    out0 = _launch(sched, tables)  # both prefills
    assert _launch(sched, tables).num_scheduled_tokens == {}  # no proposal yet: both wait
    sched.update_from_output(out0, ModelRunnerOutput(["a", "b"], [[100], [200]], spec_token_ids={"b": [7, 8, 9]}))
    out1 = _launch(sched, tables)  # a: plain decode; b: verify
    assert out1.num_scheduled_tokens == {"a": 1, "b": 4} and out1.scheduled_spec_decode_tokens == {"b": [7, 8, 9]}
    out2 = _launch(sched, tables)  # out1 in flight: a (nothing proposed) runs ahead, b (verifying) waits
    assert out2.num_scheduled_tokens == {"a": 1} and a.num_pending_tokens == 2
    sched.update_from_output(out1, ModelRunnerOutput(["a", "b"], [[101], [7, 201]]))  # b: one draft accepted
    assert b.output_token_ids == [200, 7, 201] and b.num_computed_tokens == 6 + 2
    out3 = _launch(sched, tables)  # out2 in flight: a runs ahead again; b (empty proposal) decodes
    assert out3.num_scheduled_tokens == {"a": 1, "b": 1} and out3.scheduled_spec_decode_tokens == {}
    sched.update_from_output(out2, ModelRunnerOutput(["a"], [[102]], spec_token_ids={"a": [5, 6, 7]}))
    assert a.spec_token_ids == []  # stale: made without out3's token
    out4 = _launch(sched, tables)  # out3 in flight: a waits for it, b runs ahead
    assert out4.num_scheduled_tokens == {"b": 1}
    sched.update_from_output(out3, ModelRunnerOutput(["a", "b"], [[103], [202]], spec_token_ids={"a": [5, 6]}))
    assert a.spec_token_ids == [5, 6] and a.num_pending_tokens == 0  # fresh: kept
    out5 = _launch(sched, tables)  # out4 in flight: a verifies, b runs ahead
    assert out5.num_scheduled_tokens == {"a": 3, "b": 1} and out5.scheduled_spec_decode_tokens == {"a": [5, 6]}
    sched.update_from_output(out4, ModelRunnerOutput(["b"], [[203]]))
    sched.update_from_output(out5, ModelRunnerOutput(["a", "b"], [[5, 6, 104], [204]]))
    assert a.output_token_ids == [100, 101, 102, 103, 5, 6, 104]
    assert b.output_token_ids == [200, 7, 201, 202, 203, 204]
    assert a.num_computed_tokens == 6 + 6 and b.num_computed_tokens == 6 + 5
    sched.finish_requests(["a", "b"], RequestStatus.FINISHED_ABORTED)
    assert_no_leaks(sched)
    assert not sched.spec_gate.ahead_ok
