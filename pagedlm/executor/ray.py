"""Workers as Ray actors, one per rank, placed with a placement group so ranks can live on
different hosts of a Ray cluster.

The engine joins the cluster Ray is already connected to (``ray.init`` done by the caller),
or the one ``RAY_ADDRESS`` / ``ray start --head`` names, or else starts a local one. Each
bundle is one GPU (CUDA) or one CPU; PACK placement keeps tensor-parallel ranks together
when a host has room. Per-step messages travel as msgpack bytes (executor.serial); the
tensors between ranks go over torch.distributed, rendezvous at rank 0's node.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from pathlib import Path
from typing import Any

from pagedlm.config import EngineConfig
from pagedlm.engine.messages import ModelRunnerOutput, SchedulerOutput
from pagedlm.executor import serial
from pagedlm.executor.base import WORKER_RPC_METHODS, Executor, WorkerDiedError

logger = logging.getLogger(__name__)

_PLACEMENT_TIMEOUT_S = 120.0


class RayWorkerWrapper:
    """The actor body: hosts one Worker; takes and returns bytes for the per-step calls."""

    def __init__(self, config: EngineConfig, rank: int) -> None:
        self.config = config
        self.rank = rank
        self.worker = None

    def node_info(self) -> tuple[str, str, int]:
        """(node id, node ip, a free port on it) — rank 0's is the rendezvous address."""
        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), port

    def init_worker(self, init_method: str) -> None:
        from pagedlm.worker.worker import Worker

        # Ray gives a GPU actor only its own device (CUDA_VISIBLE_DEVICES), so it is device 0.
        self.worker = Worker(self.config, self.rank, 0, init_method)
        self.worker.init_device()
        self.worker.load_model()

    def rpc(self, method: str, *args: Any) -> Any:
        if method not in WORKER_RPC_METHODS:
            raise ValueError(f"unknown worker call {method!r}")
        return getattr(self.worker, method)(*args)

    def execute_model(self, data: bytes) -> bytes | None:
        out = self.worker.execute_model(serial.decode_scheduler_output(data))
        return None if out is None else serial.encode(out)

    def launch(self, data: bytes) -> None:
        self.worker.launch(serial.decode_scheduler_output(data))

    def take_output(self) -> bytes | None:
        out = self.worker.take_output()
        return None if out is None else serial.encode(out)

    def sample_deferred(self, data: bytes) -> None:
        self.worker.sample_deferred(serial.decode_ndarray(serial.decode_raw(data)))


class RayExecutor(Executor):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        import ray

        self.world_size = config.parallel_config.world_size
        p = config.parallel_config
        self.output_rank = (p.pipeline_parallel_size - 1) * p.tensor_parallel_size
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init(address=os.environ.get("RAY_ADDRESS"))  # None: start a local cluster
        self._dead: str | None = None
        self._launched: list = []
        self._steps: deque[list] = deque()  # per submitted step: its calls on every actor
        self.actors: list = []
        self.pg = None
        try:
            self._start_actors(ray)
        except BaseException:
            self.shutdown()
            raise

    def _start_actors(self, ray: Any) -> None:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        on_cuda = self.config.device_config.device == "cuda"
        bundle = {"GPU": 1} if on_cuda else {"CPU": 1}
        self.pg = ray.util.placement_group([dict(bundle) for _ in range(self.world_size)], strategy="PACK")
        try:
            ray.get(self.pg.ready(), timeout=_PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError as e:
            raise WorkerDiedError(f"Ray could not place {self.world_size} workers with {bundle} each within "
                                  f"{_PLACEMENT_TIMEOUT_S:.0f}s; cluster resources: {ray.cluster_resources()}") from e
        # Actors import this package from the same place the engine did.
        package_root = str(Path(__file__).resolve().parents[2])
        pythonpath = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
        actor_cls = ray.remote(num_cpus=0 if on_cuda else 1, num_gpus=1 if on_cuda else 0)(RayWorkerWrapper)
        self.actors = [
            actor_cls.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank),
                runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
            ).remote(self.config, rank)
            for rank in range(self.world_size)
        ]
        infos = self._get([a.node_info.remote() for a in self.actors])
        self.node_ids = [info[0] for info in infos]
        _, ip, port = infos[0]
        self._get([a.init_worker.remote(f"tcp://{ip}:{port}") for a in self.actors])
        logger.info("Started %d Ray workers on %d node(s): %s", self.world_size, len(set(self.node_ids)),
                    [f"rank {r} @ {info[1]}" for r, info in enumerate(infos)])

    def _get(self, refs: list) -> list:
        import ray

        if self._dead is not None:
            raise WorkerDiedError(self._dead)
        try:
            return ray.get(refs)
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
            self._dead = f"a Ray worker failed: {e}"
            logger.error("Stopping the engine: %s", self._dead)
            self.shutdown()
            raise WorkerDiedError(self._dead) from e

    def _rpc(self, method: str, *args: object) -> list:
        return self._get([a.rpc.remote(method, *args) for a in self.actors])

    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        data = serial.encode(sched)
        outs = self._get([a.execute_model.remote(data) for a in self.actors])
        return serial.decode_runner_output(outs[self.output_rank])

    def _start_step(self, sched: SchedulerOutput) -> None:
        data = serial.encode(sched)
        self._steps.append([a.execute_model.remote(data) for a in self.actors])

    def _finish_step(self) -> ModelRunnerOutput:
        # Only this step's calls: a step launched after it never delays its output.
        return serial.decode_runner_output(self._get(self._steps.popleft())[self.output_rank])

    def launch(self, sched: SchedulerOutput) -> None:
        data = serial.encode(sched)
        self._launched.extend(a.launch.remote(data) for a in self.actors)

    def take_output(self) -> ModelRunnerOutput:
        launched, self._launched = self._launched, []
        outs = self._get(launched + [a.take_output.remote() for a in self.actors])[len(launched):]
        return serial.decode_runner_output(outs[self.output_rank])

    def sample_deferred(self, bitmask: Any) -> None:
        data = serial.encode(bitmask)
        self._launched.extend(a.sample_deferred.remote(data) for a in self.actors)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.pg is not None:
            ray.util.remove_placement_group(self.pg)
            self.pg = None
        if self._started_ray and ray.is_initialized():
            ray.shutdown()
            self._started_ray = False
