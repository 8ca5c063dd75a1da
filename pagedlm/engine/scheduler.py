"""Continuous-batching scheduler (pure Python, no torch).

One invariant, no phases: every request has ``num_computed_tokens`` catching up with
``num_tokens`` (prompt + generated). Each step hands out a token budget over running
requests first (decodes and unfinished prefill chunks), then waiting ones in the order of
the scheduling policy (``request_queue``: FCFS, or by priority), capped at ``max_num_seqs``.
Running requests are kept in the policy's order too (admission, or priority), so the budget
goes to them in that order, and when blocks run out the last one is preempted (recompute:
the newest, or the one of lowest priority): its blocks go back to the pool, still cached, and
it rejoins the waiting queue ahead of newer requests.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from pagedlm.config import CacheConfig, SchedulerConfig
from pagedlm.engine.kv_cache import KVCacheManager
from pagedlm.engine.messages import (
    CachedRequestData,
    EngineCoreOutput,
    ModelRunnerOutput,
    NewRequestData,
    SchedulerOutput,
    SchedulerStats,
)
from pagedlm.engine.prompt_logprobs import unsent_prompt_logprobs
from pagedlm.engine.request import Request, RequestStatus
from pagedlm.engine.request_queue import make_waiting_queue
from pagedlm.lora.scheduling import LoRAStepGate, lora_stats
from pagedlm.spec_decode.async_gate import SpecAheadGate
from pagedlm.spec_decode.metrics import SpecDecodingStats
from pagedlm.structured_output.manager import StructuredOutputManager, Verdict
from pagedlm.structured_output.validate import InvalidStructuredOutputError

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, scheduler_config: SchedulerConfig, cache_config: CacheConfig, num_blocks: int,
                 structured_output: StructuredOutputManager | None = None, max_loras: int | None = None) -> None:
        self.config = scheduler_config
        self.block_size = cache_config.block_size
        self.memory_hint = cache_config.memory_hint
        self.max_model_len = scheduler_config.max_model_len
        self.kv = KVCacheManager(num_blocks, cache_config.block_size, cache_config.enable_prefix_caching)
        self.requests: dict[str, Request] = {}
        self.waiting = make_waiting_queue(scheduler_config.scheduling_policy)
        self.running: list[Request] = []
        self.finished_req_ids: set[str] = set()
        self.preempted_req_ids: set[str] = set()  # carried over from a step no runner saw (batch_queue)
        self.num_preemptions_total = 0
        self.num_steps_total = 0
        self.last_step_num_tokens = 0
        # Requests finished inside schedule() (they can never fit): reported by the next update.
        self._errored: list[Request] = []
        self.structured_output = structured_output or StructuredOutputManager(None)
        # Speculative decoding: drafts scheduled this step (req_id -> draft ids) and counters.
        self._scheduled_spec: dict[str, list[int]] = {}
        self.spec_stats = SpecDecodingStats(scheduler_config.num_spec_tokens)
        self.spec_gate = SpecAheadGate()  # (async) which requests run ahead of their step in flight
        # Pipeline parallelism: requests in a launched batch whose output has not come back.
        # schedule() skips them (and never preempts them) until it does; the engine core owns the set.
        self.inflight_req_ids: set[str] = set()
        self.lora_gate = LoRAStepGate(max_loras)  # at most max_loras adapters per step

    # ---- queue management -------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        self.requests[request.request_id] = request
        self.waiting.add(request)
        self.structured_output.add_request(request)  # constrained: WAITING_FOR_GRAMMAR, compiling

    def finish_requests(self, request_ids: list[str], status: RequestStatus) -> None:
        """Abort (or stop, for stop strings found by the frontend) requests by id."""
        for req_id in request_ids:
            request = self.requests.get(req_id)
            if request is None or request.is_finished:
                continue
            if request.status == RequestStatus.RUNNING:
                self.running.remove(request)
            else:
                self.waiting.remove(request)
            request.status = status
            self._free(request)

    def _free(self, request: Request, uncache: bool = False) -> None:
        self.kv.free(request, uncache)
        self.spec_gate.forget(request.request_id)
        self.finished_req_ids.add(request.request_id)
        del self.requests[request.request_id]

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running or self._errored)

    def get_num_unfinished_requests(self) -> int:
        return len(self.waiting) + len(self.running)

    # ---- scheduling -------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        self._scheduled_spec = {}
        self._pause_speculation()
        num_scheduled: dict[str, int] = {}
        cached: list[CachedRequestData] = []
        preempted: list[Request] = []
        budget = self._schedule_running(budget, num_scheduled, cached, preempted)
        new_reqs: list[Request] = []
        if not preempted:
            self._schedule_waiting(budget, num_scheduled, new_reqs)
        return self._make_output(num_scheduled, cached, new_reqs, preempted)

    def _schedule_running(
        self, budget: int, num_scheduled: dict[str, int], cached: list[CachedRequestData], preempted: list[Request]
    ) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_computed = request.num_computed_tokens
            num_known = len(request.all_token_ids) + request.num_pending_tokens
            num_wanted = num_known + len(request.spec_token_ids) - num_computed  # drafts are verified too
            num_new = self._cap_prefill(min(num_wanted, budget, self.max_model_len - num_computed))
            if num_new <= 0 or request.request_id in self.inflight_req_ids or self._reaches_max_tokens(request) \
                    or self._waits_for_verify(request):
                index += 1
                continue
            if self._never_fits(num_computed + num_new):
                self.running.pop(index)
                self._fail_unfittable(request)
                continue
            lookahead = self._lookahead(num_computed + num_new, num_known)
            if request.num_pending_tokens and self.config.num_spec_tokens:
                # Running ahead of a plain step: its proposer scratch is stale (the runner's
                # rollback keeps blocks up to the computed tokens only).
                self.kv.trim(request, num_computed)
            while (blocks := self.kv.allocate_slots(request, num_new, None, lookahead)) is None:
                victim = self.running.pop(self._victim_index(index))
                self._preempt(victim)
                preempted.append(victim)
                if victim is request:
                    break
            if blocks is None:
                break
            num_scheduled[request.request_id] = num_new
            cached.append(CachedRequestData(request.request_id, [b.block_id for b in blocks], num_computed))
            request.num_computed_tokens = num_computed + num_new
            if request.spec_token_ids:  # the budget may cut the drafts short; the rest are dropped
                self._scheduled_spec[request.request_id] = request.spec_token_ids[: max(0, num_computed + num_new - num_known)]
                request.spec_token_ids = []
            if request.num_computed_tokens >= num_known:
                request.num_pending_tokens += 1  # this step samples its next token
            budget -= num_new
            index += 1
        return budget

    def _pause_speculation(self) -> None:
        """speculative_config's disable_by_batch_size: a step with that many running requests
        verifies no drafts (they are dropped; the proposer drafts again after the step). The
        proposer's lookahead slots are still allocated: the runner decides whether to draft
        from its own request count, which can differ (preemptions, admissions)."""
        limit = self.config.spec_disable_by_batch_size
        if limit is not None and len(self.running) >= limit:
            for request in self.running:
                request.spec_token_ids = []

    def _waits_for_verify(self, request: Request) -> bool:
        """(async scheduling with speculation) a request with a step in flight waits for it
        when that step verifies drafts or a proposal is due; a plain decode runs ahead
        (spec_decode/async_gate.py)."""
        return self.config.num_spec_tokens > 0 and self.spec_gate.waits(request)

    @staticmethod
    def _reaches_max_tokens(request: Request) -> bool:
        """Whether the steps in flight already sample the request's last token (each yields at
        least one): under async scheduling another step would compute a token nobody reads."""
        return request.num_pending_tokens > 0 and request.num_output_tokens + request.num_pending_tokens >= request.max_tokens

    def _victim_index(self, index: int) -> int:
        """The last running request not yet scheduled this step and not in flight (at worst
        the one at ``index``, which is neither): a batch in flight keeps its blocks. The
        running list is in the policy's order (request_queue), so that is the newest one, or
        under the priority policy the one of lowest priority."""
        victim = len(self.running) - 1
        while victim > index and self.running[victim].request_id in self.inflight_req_ids:
            victim -= 1
        return victim

    def _preempt(self, request: Request) -> None:
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.spec_token_ids = []
        request.num_preemptions += 1
        self.num_preemptions_total += 1
        self.waiting.put_back([request])
        logger.warning(
            "Request %s preempted (recompute): not enough KV cache blocks; total preemptions %d. "
            "To avoid it, %s or lower --max-num-seqs.",
            request.request_id, self.num_preemptions_total, self.memory_hint,
        )

    def _cap_prefill(self, num_new: int) -> int:
        """--long-prefill-token-threshold: a long prompt takes at most that many tokens a step
        (vLLM's rule), leaving the rest of the budget to other requests."""
        threshold = self.config.long_prefill_token_threshold
        return threshold if 0 < threshold < num_new else num_new

    def _schedule_waiting(self, budget: int, num_scheduled: dict[str, int], new_reqs: list[Request]) -> None:
        compiling: list[Request] = []  # skipped, not blocking: they keep their place
        self.lora_gate.begin(self.running)
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting[0]
            if request.status == RequestStatus.WAITING_FOR_GRAMMAR and not self._grammar_ready(request):
                if request.status == RequestStatus.WAITING_FOR_GRAMMAR:
                    compiling.append(self.waiting.popleft())
                continue
            if not self.lora_gate.admits(request):  # its adapter would be one too many this step
                compiling.append(self.waiting.popleft())
                continue
            if request.num_pending_tokens:
                break  # preempted with a token still in flight: resume once it has arrived
            if self._never_fits(request.num_tokens):
                self._fail_unfittable(self.waiting.popleft())
                continue
            hits, num_hit_tokens = self.kv.get_computed_blocks(request)
            num_new = self._cap_prefill(min(request.num_tokens - num_hit_tokens, budget))
            if num_new < request.num_tokens - num_hit_tokens and not self.config.enable_chunked_prefill:
                break  # whole prompts only: it runs in a later step with more budget
            lookahead = self._lookahead(num_hit_tokens + num_new, request.num_tokens)
            if self.kv.allocate_slots(request, num_new, hits, lookahead) is None:
                if not self.running and not new_reqs:
                    self._fail_unfittable(self.waiting.popleft())
                    continue
                break
            self.waiting.popleft()
            request.status = RequestStatus.RUNNING
            request.num_computed_tokens = num_hit_tokens
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = num_hit_tokens
                request.first_scheduled_time = time.time()
            self.waiting.add_running(self.running, request)
            self.lora_gate.admitted(request)
            new_reqs.append(request)
            num_scheduled[request.request_id] = num_new
            if num_hit_tokens + num_new == request.num_tokens and request.pooling_params is None:
                request.num_pending_tokens = 1  # pooling requests sample nothing: done after this step
            budget -= num_new
        self.waiting.put_back(compiling)

    def deferred_grammar_bitmask(self, sched: SchedulerOutput) -> np.ndarray:
        """(async scheduling) the bitmask of a launched step, once the previous step's tokens
        have advanced the matchers (the device runs the step's forward meanwhile)."""
        return self.structured_output.bitmask_for(self.requests, sched.structured_output_request_ids)

    def _grammar_ready(self, request: Request) -> bool:
        """True once its grammar compiled; a grammar that cannot compile fails the request."""
        try:
            if not self.structured_output.grammar_ready(request):
                return False
        except InvalidStructuredOutputError as e:
            self.waiting.popleft()
            request.status = RequestStatus.FINISHED_ERROR
            request.error = str(e)
            self._errored.append(request)
            self._free(request)
            return False
        request.status = RequestStatus.WAITING
        return True

    def _lookahead(self, num_computed_after_step: int, num_known: int) -> int:
        """Scratch KV slots for a proposer that drafts after this step (only when it samples)."""
        if num_computed_after_step < num_known:
            return 0
        return max(0, min(self.config.num_lookahead_tokens, self.max_model_len - num_computed_after_step))

    def _never_fits(self, num_tokens: int) -> bool:
        return -(-num_tokens // self.block_size) > self.kv.num_blocks

    def _fail_unfittable(self, request: Request) -> None:
        # With nothing else holding blocks, this request's next chunk cannot be placed: it
        # would wait forever. Finish it with an error instead of stalling the engine.
        request.status = RequestStatus.FINISHED_ERROR
        request.error = (
            f"request needs more KV cache blocks than exist ({self.kv.num_blocks} blocks of "
            f"{self.block_size} tokens)"
        )
        self._errored.append(request)
        self._free(request)

    def _make_output(
        self, num_scheduled: dict[str, int], cached: list[CachedRequestData], new_reqs: list[Request],
        preempted: list[Request],
    ) -> SchedulerOutput:
        # Running requests already advanced their num_computed_tokens as they were scheduled.
        new_data = []
        for r in new_reqs:
            new_data.append(NewRequestData(r.request_id, r.prompt_token_ids, r.output_token_ids[:], r.sampling_params,
                                           self.kv.get_block_ids(r.request_id), r.num_computed_tokens,
                                           r.pooling_params, r.lora_request, r.prompt_embeds))
            r.num_computed_tokens += num_scheduled[r.request_id]
        # The bitmask waits for the tokens in flight (deferred_grammar_bitmask); with speculation
        # no constrained request is scheduled with a sampling step in flight (async_gate.py).
        if self.config.async_scheduling and not self.config.num_spec_tokens:
            grammar_req_ids = self.structured_output.sampling_request_ids(self.requests, list(num_scheduled))
            bitmask = None
        else:
            grammar_req_ids, bitmask = self.structured_output.grammar_bitmask(self.requests, list(num_scheduled))
        out = SchedulerOutput(
            scheduled_new_reqs=new_data,
            scheduled_cached_reqs=cached,
            num_scheduled_tokens=num_scheduled,
            total_num_scheduled_tokens=sum(num_scheduled.values()),
            finished_req_ids=self.finished_req_ids,
            preempted_req_ids=self.preempted_req_ids | {r.request_id for r in preempted},
            structured_output_request_ids=grammar_req_ids,
            grammar_bitmask=bitmask,
            scheduled_spec_decode_tokens=self._scheduled_spec,
        )
        self.finished_req_ids = set()
        self.preempted_req_ids = set()
        self.num_steps_total += 1
        self.last_step_num_tokens = out.total_num_scheduled_tokens
        return out

    # ---- results ------------------------------------------------------------------------
    def update_from_output(self, sched: SchedulerOutput, runner: ModelRunnerOutput) -> list[EngineCoreOutput]:
        outputs = [self._error_output(r) for r in self._errored]
        self._errored = []
        outputs += self._fail_requests(runner.request_errors)
        for i, req_id in enumerate(runner.req_ids):
            request = self.requests.get(req_id)
            if request is None:  # aborted while the step ran, or failed above
                continue
            new_ids = runner.sampled_token_ids[i]
            prompt_lp = runner.prompt_logprobs.get(req_id)
            if prompt_lp is not None:  # a recompute after preemption scores delivered positions again
                prompt_lp = unsent_prompt_logprobs(request, sched, prompt_lp)
            pooled = runner.pooler_output.get(req_id)
            if not new_ids and prompt_lp is None and pooled is None:
                continue
            request.num_pending_tokens -= min(len(new_ids), 1)  # one sampling step, however many tokens
            drafts = sched.scheduled_spec_decode_tokens.get(req_id)
            if drafts:  # rejected drafts' KV is stale: roll the computed tokens back over it
                if request.status == RequestStatus.RUNNING:  # (async) preempted meanwhile: recomputed from 0
                    request.num_computed_tokens -= len(drafts) + 1 - len(new_ids)
                self.spec_stats.observe(len(drafts), len(new_ids) - 1)
            new_ids = self._append_and_check_stop(request, new_ids)
            if pooled is not None:
                request.status = RequestStatus.FINISHED_STOPPED  # its prompt is computed: nothing more to do
            outputs.append(
                EngineCoreOutput(
                    req_id=req_id,
                    new_token_ids=new_ids,
                    new_logprobs=runner.logprobs.get(req_id),
                    new_prompt_logprobs=prompt_lp,
                    finish_reason=request.status.finish_reason,
                    stop_reason=request.stop_reason,
                    num_cached_tokens=max(request.num_cached_tokens, 0),
                    first_scheduled_time=request.first_scheduled_time,
                    error=request.error,
                    pooling_output=pooled,
                )
            )
            if request.is_finished:
                # Usually running; a request preempted while its token was in flight waits.
                (self.running if request in self.running else self.waiting).remove(request)
                self._free(request)
            elif self.config.num_spec_tokens:
                self._after_spec_step(request, runner.spec_token_ids.get(req_id))
        return outputs

    def _fail_requests(self, request_errors: dict[str, str]) -> list[EngineCoreOutput]:
        """Finish with an error the requests the workers could not run as asked (an adapter
        they could not read: its tokens ran on the base model). The hashes of their blocks go
        too: a later request must not hit KV computed otherwise than its hash says."""
        failed = []
        for req_id, message in request_errors.items():
            request = self.requests.get(req_id)
            if request is None:
                continue
            (self.running if request in self.running else self.waiting).remove(request)
            request.status = RequestStatus.FINISHED_ERROR
            request.error = message
            failed.append(request)
            self._free(request, uncache=True)
        return [self._error_output(r) for r in failed]

    def _after_spec_step(self, request: Request, drafts: list[int] | None) -> None:
        """Free blocks past the computed tokens (rejected drafts, proposer scratch), then keep
        the drafts for the next step: no more than the request may still generate or hold.
        With a later step of the request in flight (async) nothing is trimmed (that step's
        lookahead slots are in use) and the proposal is stale."""
        drafts = self.spec_gate.output_back(request, drafts)
        if request.num_pending_tokens:
            return
        self.kv.trim(request, request.num_computed_tokens)
        if not drafts or request.status != RequestStatus.RUNNING:
            return
        room = min(request.max_tokens - request.num_output_tokens - 1, self.max_model_len - request.num_tokens)
        request.spec_token_ids = list(drafts[: max(room, 0)])

    def _append_and_check_stop(self, request: Request, new_ids: list[int]) -> list[int]:
        params = request.sampling_params
        for n, token_id in enumerate(new_ids, start=1):
            request.append_output_token(token_id)
            if request.structured_output is not None and self._grammar_finished(request, token_id):
                return new_ids[:n]
            num_output = len(request.output_token_ids)
            if num_output >= params.min_tokens:
                if token_id == request.eos_token_id and not params.ignore_eos:
                    request.status = RequestStatus.FINISHED_STOPPED
                    return new_ids[:n]
                if token_id in params.stop_token_ids:
                    request.status = RequestStatus.FINISHED_STOPPED
                    request.stop_reason = token_id
                    return new_ids[:n]
            if num_output >= request.max_tokens or len(request.all_token_ids) >= self.max_model_len:
                request.status = RequestStatus.FINISHED_LENGTH_CAPPED
                return new_ids[:n]
            if (params.repetition_detection is not None and num_output >= params.min_tokens
                    and params.repetition_detection.repeats(request.output_token_ids)):
                request.status = RequestStatus.FINISHED_REPETITION
                request.stop_reason = "repetition_detected"
                return new_ids[:n]
        return new_ids

    def _grammar_finished(self, request: Request, token_id: int) -> bool:
        verdict = self.structured_output.accept_token(request, token_id)
        if verdict == Verdict.TERMINATED:  # its stop token (EOS or another) completed the grammar
            request.status = RequestStatus.FINISHED_STOPPED
            request.stop_reason = None if token_id == request.eos_token_id else token_id
        elif verdict == Verdict.REJECTED:
            request.status = RequestStatus.FINISHED_ERROR
            request.error = (f"no token the request's structured output allows was left to sample (token {token_id} "
                             "came out): its other settings (min_tokens, allowed_token_ids, bad_words, logit_bias, "
                             "stop tokens) excluded every one")
        return verdict != Verdict.OK

    @staticmethod
    def _error_output(request: Request) -> EngineCoreOutput:
        return EngineCoreOutput(request.request_id, [], finish_reason="error", error=request.error)

    def stats(self) -> SchedulerStats:
        stats = self._stats()
        if self.lora_gate.max_loras is not None:
            stats.max_lora = self.lora_gate.max_loras
            stats.running_lora_adapters, stats.waiting_lora_adapters = lora_stats(self.running, self.waiting)
        return stats

    def _stats(self) -> SchedulerStats:
        return SchedulerStats(
            num_running_reqs=len(self.running),
            num_waiting_reqs=len(self.waiting),
            kv_cache_usage=self.kv.usage(),
            num_preemptions_total=self.num_preemptions_total,
            prefix_cache_queries_total=self.kv.stats.queries,
            prefix_cache_hits_total=self.kv.stats.hits,
            num_free_blocks=self.kv.num_free_blocks,
            num_total_blocks=self.kv.num_blocks,
            num_steps_total=self.num_steps_total,
            last_step_num_tokens=self.last_step_num_tokens,
            spec_decoding=self.spec_stats.snapshot() if self.config.num_spec_tokens else None,
        )
