"""EngineCore: the scheduler and the executor (which drives the workers), one step at a time."""

from __future__ import annotations

import logging

from pagedlm.config import EngineConfig
from pagedlm.engine import warm_up
from pagedlm.engine.batch_queue import BatchQueue
from pagedlm.engine.messages import EngineCoreOutput, SchedulerOutput
from pagedlm.engine.request import Request, RequestStatus
from pagedlm.engine.scheduler import Scheduler, SchedulerStats
from pagedlm.engine.sleep_mode import SLEEPING_MESSAGE, EngineSleepingError, SleepModeError, check_sleep_args
from pagedlm.executor.base import Executor
from pagedlm.spec_decode.metrics import SpecDecodingLogger
from pagedlm.structured_output.manager import StructuredOutputManager

logger = logging.getLogger(__name__)


class EngineCore:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.executor = Executor.create(config)
        try:
            num_blocks = self.executor.initialize()
            self.structured_output = StructuredOutputManager.from_config(config)
            self._start_scheduler(num_blocks)
            if warm_up.enabled(config):  # engine/warm_up.py: a few requests through step(), then a fresh start
                warm_up.run(self, num_blocks)
                self._start_scheduler(num_blocks, previous=self.scheduler)
            self.executor.collective_rpc("ready")
        except BaseException:
            self.executor.shutdown()
            raise

    def _start_scheduler(self, num_blocks: int, previous: Scheduler | None = None) -> None:
        """A fresh scheduler (and what keeps state beside it). After the warm-up the runners
        still hold the warm-up requests' rows: the first real step tells them to drop them."""
        config = self.config
        lora = config.lora_config
        self.scheduler = Scheduler(config.scheduler_config, config.cache_config, num_blocks, self.structured_output,
                                   max_loras=lora.max_loras if lora is not None else None)
        if previous is not None:
            self.scheduler.finished_req_ids |= previous.finished_req_ids
            self.scheduler.preempted_req_ids |= previous.preempted_req_ids
        self._inflight: SchedulerOutput | None = None  # launched, not yet collected (async scheduling)
        self.spec_logger = SpecDecodingLogger() if config.speculative_config is not None and config.log_stats else None
        # Pipeline parallelism: up to one batch per stage in flight (engine/batch_queue.py).
        pp = config.parallel_config.pipeline_parallel_size
        self.batch_queue = BatchQueue(self.scheduler, self.executor, self.structured_output, pp) if pp > 1 else None

    @property
    def runner(self):
        """The model runner when it lives in this process (the 'uni' executor), else None."""
        worker = getattr(self.executor, "worker", None)
        return worker.runner if worker is not None else None

    def add_request(self, request: Request) -> None:
        if self.executor.is_sleeping():  # nothing to run it on: refused, never queued
            raise EngineSleepingError(SLEEPING_MESSAGE)
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str]) -> None:
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def stop_requests(self, request_ids: list[str]) -> None:
        """Finish requests the frontend found a stop string in."""
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_STOPPED)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or self._inflight is not None or bool(self.batch_queue)

    def step(self) -> list[EngineCoreOutput]:
        if self.batch_queue is not None:
            return self.batch_queue.step()
        if self.config.scheduler_config.async_scheduling:
            return self._step_overlapped()
        if not self.scheduler.has_unfinished_requests():
            return []
        sched = self.scheduler.schedule()
        if sched.total_num_scheduled_tokens == 0:
            self.structured_output.wait_for_compiles(0.01)  # only grammar-waiting requests: don't spin
        runner_output = self.executor.execute_model(sched)
        outputs = self.scheduler.update_from_output(sched, runner_output)
        self._log_spec_decoding()
        return outputs

    def _log_spec_decoding(self) -> None:
        if self.spec_logger is not None:  # the periodic acceptance line
            self.spec_logger.maybe_log(self.scheduler.spec_stats.snapshot())

    def _step_overlapped(self) -> list[EngineCoreOutput]:
        """Launch step N, then collect step N-1 while the device runs N: the host's
        scheduling and bookkeeping overlap the device instead of leaving it idle."""
        outputs: list[EngineCoreOutput] = []
        launched = None
        if self.scheduler.has_unfinished_requests():
            launched = self.scheduler.schedule()
            if launched.total_num_scheduled_tokens == 0 and self._inflight is None:
                self.structured_output.wait_for_compiles(0.01)
            self.executor.launch(launched)
        if self._inflight is not None:
            outputs = self.scheduler.update_from_output(self._inflight, self.executor.take_output())
            self._log_spec_decoding()
        if launched is not None and launched.grammar_deferred:
            # The forward runs while the last step's tokens advance the matchers; then sample.
            self.executor.sample_deferred(self.scheduler.deferred_grammar_bitmask(launched))
        self._inflight = launched
        return outputs

    def check_health(self) -> None:
        """Raises WorkerDiedError when a worker is gone (the idle loop's check)."""
        self.executor.check_health()

    def stats(self) -> SchedulerStats:
        return self.scheduler.stats()

    def reset_prefix_cache(self) -> bool:
        return self.scheduler.kv.reset_prefix_cache()

    # ---- sleep mode (vLLM's LLM.sleep / wake_up) ------------------------------------------
    # The KV cache is freed, so every block must be free and the prefix cache empty first:
    # sleep refuses while requests run (vLLM's callers sleep between rollouts).
    def sleep(self, level: int = 1) -> bool:
        check_sleep_args(self.config.cache_config.enable_sleep_mode, level)
        if self.executor.is_sleeping():
            return True
        if self.has_unfinished_requests():
            raise SleepModeError(f"cannot sleep while {len(self.scheduler.running) + len(self.scheduler.waiting)} "
                                 "request(s) are unfinished: finish or abort them first")
        if not self.scheduler.kv.reset_prefix_cache():
            raise SleepModeError("cannot sleep: KV blocks are still in use")
        self.executor.sleep(level)
        return True

    def wake_up(self, tags: list[str] | None = None) -> bool:
        check_sleep_args(self.config.cache_config.enable_sleep_mode, tags=tags)
        self.executor.wake_up(tags)
        return True

    def is_sleeping(self) -> bool:
        return self.executor.is_sleeping()

    # Worker methods a frontend may call on every rank (LLM.collective_rpc): results are
    # msgspec-encodable, never pickled.
    RPC_METHODS = ("reload_weights",)

    def collective_rpc(self, method: str, *args: object) -> list:
        if method not in self.RPC_METHODS:
            raise ValueError(f"collective_rpc: unknown method {method!r} (supported: {list(self.RPC_METHODS)})")
        return self.executor.collective_rpc(method, *args)

    def shutdown(self) -> None:
        """Stop the workers (idempotent)."""
        self.executor.shutdown()
