"""The executor seam: EngineCore talks to an Executor, never to a model runner."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque

import numpy as np

from pagedlm.config import EngineConfig
from pagedlm.engine.messages import ModelRunnerOutput, SchedulerOutput
from pagedlm.engine.sleep_mode import SLEEP_TAGS

logger = logging.getLogger(__name__)

# The Worker methods ``collective_rpc`` may call on every rank, whatever carries the call
# (a worker process's pipe, a Ray actor): the engine's set-up and sleep calls, and the
# introspection that benchmarks and tests ask for.
WORKER_RPC_METHODS = ("determine_num_blocks", "initialize_kv_cache", "warm_up", "ready", "describe", "runtime_stats",
                      "time_step_collectives", "expert_layout", "sleep", "wake_up", "reload_weights")


class WorkerDiedError(RuntimeError):
    """A worker process or actor died or failed; the engine cannot continue."""


class StepFuture:
    """A launched step's output, to come. Steps finish in launch order, so ``result()``
    first collects every older step still pending (each future keeps its own output)."""

    def __init__(self, executor: "Executor") -> None:
        self._executor = executor
        self._output: ModelRunnerOutput | None = None

    def done(self) -> bool:
        return self._output is not None

    def result(self) -> ModelRunnerOutput:
        while self._output is None:
            self._executor._collect_oldest()
        return self._output


class Executor(ABC):
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._pending: deque[StepFuture] = deque()  # submitted, not yet collected, oldest first

    @staticmethod
    def create(config: EngineConfig) -> "Executor":
        backend = config.parallel_config.distributed_executor_backend
        if backend == "uni":
            from pagedlm.executor.uniproc import UniProcExecutor

            return UniProcExecutor(config)
        if backend == "mp":
            from pagedlm.executor.multiproc import MultiprocExecutor

            return MultiprocExecutor(config)
        if backend == "ray":
            from pagedlm.executor.ray import RayExecutor

            return RayExecutor(config)
        raise ValueError(f"unknown distributed_executor_backend {backend!r}")

    def initialize(self) -> int:
        """Size the KV cache on every rank (the same block count everywhere: the minimum),
        allocate it, warm up; returns the block count the scheduler gets."""
        per_rank = self.collective_rpc("determine_num_blocks")
        num_blocks = min(per_rank)
        self.collective_rpc("initialize_kv_cache", num_blocks)
        self.collective_rpc("warm_up")
        layout = self.collective_rpc("describe")
        logger.info("World of %d rank(s), KV blocks per rank %s -> %d on every rank:\n  %s",
                    len(layout), per_rank, num_blocks, "\n  ".join(layout))
        return num_blocks

    # ---- sleep mode: every rank frees / restores its own weights and KV cache ----------------
    sleeping_tags: frozenset[str] = frozenset()

    def is_sleeping(self) -> bool:
        return bool(self.sleeping_tags)

    def sleep(self, level: int = 1) -> None:
        if self.sleeping_tags:
            logger.warning("The executor is already sleeping.")
            return
        self.collective_rpc("sleep", level)
        self.sleeping_tags = frozenset(SLEEP_TAGS)

    def wake_up(self, tags: list[str] | None = None) -> None:
        if not self.sleeping_tags:
            logger.warning("The executor is not sleeping.")
            return
        tags = [t for t in (tags or SLEEP_TAGS) if t in self.sleeping_tags]
        if tags:
            self.collective_rpc("wake_up", tags)
        self.sleeping_tags = self.sleeping_tags - set(tags)

    def submit(self, sched: SchedulerOutput) -> StepFuture:
        """Start a step without waiting (pipeline parallelism keeps several in flight)."""
        self._start_step(sched)
        future = StepFuture(self)
        self._pending.append(future)
        return future

    def _collect_oldest(self) -> None:
        future = self._pending[0]
        future._output = self._finish_step()  # raises WorkerDiedError if a worker died meanwhile
        self._pending.popleft()

    def _start_step(self, sched: SchedulerOutput) -> None:
        """submit()'s transport. Workers in other processes override it so the output rank
        answers each step as soon as it is done: an output must never wait for a step
        launched after it, or the next batch could not enter the first stage meanwhile."""
        self.launch(sched)

    def _finish_step(self) -> ModelRunnerOutput:
        """The oldest started step's output (waits for it)."""
        return self.take_output()

    def collective_rpc(self, method: str, *args: object) -> list:
        """Call ``method`` (one of ``WORKER_RPC_METHODS``) on every worker; their results in
        rank order. Any other name is refused here, before it reaches a worker: a step
        method called this way would take a worker down with the engine."""
        if method not in WORKER_RPC_METHODS:
            raise ValueError(f"unknown worker call {method!r} (supported: {list(WORKER_RPC_METHODS)})")
        return self._rpc(method, *args)

    @abstractmethod
    def _rpc(self, method: str, *args: object) -> list:
        """``collective_rpc`` once the name is checked."""

    @abstractmethod
    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """Run a step and wait for its output."""

    @abstractmethod
    def launch(self, sched: SchedulerOutput) -> None:
        """Start a step without waiting (async scheduling); take_output() collects it."""

    @abstractmethod
    def take_output(self) -> ModelRunnerOutput:
        ...

    @abstractmethod
    def sample_deferred(self, bitmask: np.ndarray) -> None:
        """(async scheduling, structured outputs) sample the launched step with its bitmask."""

    def check_health(self) -> None:
        """Raises WorkerDiedError when a worker is gone; called while the engine idles, when
        no step would notice. The default checks nothing: a worker in this process dies with it
        (Ray's actors are still checked only when a step waits on them)."""

    def shutdown(self) -> None:
        pass
