"""One rank in the engine core's own process: today's path, no copies, no sockets."""

from __future__ import annotations

import numpy as np

from pagedlm.config import EngineConfig
from pagedlm.engine.messages import ModelRunnerOutput, SchedulerOutput
from pagedlm.executor.base import Executor
from pagedlm.worker.worker import Worker


class UniProcExecutor(Executor):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        if config.parallel_config.world_size != 1:
            raise ValueError("the 'uni' executor runs one rank; use 'mp' or 'ray' for tensor/pipeline parallelism")
        self.worker = Worker(config)
        self.worker.init_device()
        self.worker.load_model()

    def _rpc(self, method: str, *args: object) -> list:
        return [getattr(self.worker, method)(*args)]

    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        return self.worker.execute_model(sched)

    def launch(self, sched: SchedulerOutput) -> None:
        self.worker.launch(sched)

    def take_output(self) -> ModelRunnerOutput:
        return self.worker.take_output()

    def sample_deferred(self, bitmask: np.ndarray) -> None:
        self.worker.sample_deferred(bitmask)
