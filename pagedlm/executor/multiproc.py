"""One worker process per rank on this host.

Transport: ZMQ over ``ipc://`` sockets in a private (0700) temporary directory. The executor
PUSHes each command to every worker (one socket per rank: nothing is lost to a slow joiner)
and PULLs replies; only the output rank answers a step. Everything on the sockets is msgpack
(the SchedulerOutput / ModelRunnerOutput via executor.serial); the EngineConfig reaches the
workers once, as the spawn arguments of the process, never over a socket. The tensors
between ranks go over torch.distributed (gloo on CPU, NCCL on CUDA), rendezvous through a
file in the same private directory.

Failure: every wait polls with a short timeout and checks that each worker is alive, so a
worker that dies (or reports an exception) raises WorkerDiedError within a fraction of a
second; the executor then stops the remaining workers. Workers exit on their own when the
engine process disappears: they watch multiprocessing's parent sentinel (a pipe whose other end
only the engine holds), not their parent pid, since a CPU worker's OS parent is the engine's
forkserver, which outlives a killed engine while the workers hold its liveness pipe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import tempfile
import time
import traceback
import weakref
from collections import deque
from typing import Any, Iterator

import numpy as np
import zmq

from pagedlm import process_context
from pagedlm.config import EngineConfig
from pagedlm.engine.messages import ModelRunnerOutput, SchedulerOutput
from pagedlm.executor import serial
from pagedlm.executor.base import WORKER_RPC_METHODS, Executor, WorkerDiedError

logger = logging.getLogger(__name__)

_POLL_MS = 200


class MultiprocExecutor(Executor):
    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.world_size = config.parallel_config.world_size
        self.output_rank = (config.parallel_config.pipeline_parallel_size - 1) * config.parallel_config.tensor_parallel_size
        self._dead: str | None = None
        self._early: dict[int, deque] = {}  # replies that came before their wait, per rank
        self._dir = tempfile.mkdtemp(prefix="pagedlm-mp-")  # mode 0700: only this user can connect
        self._ctx = zmq.Context()
        self._results = self._ctx.socket(zmq.PULL)
        self._results.bind(f"ipc://{self._dir}/results")
        self._commands = []
        for rank in range(self.world_size):
            sock = self._ctx.socket(zmq.PUSH)
            sock.bind(f"ipc://{self._dir}/commands-{rank}")
            self._commands.append(sock)
        spawn = _process_context(config)
        self.procs = [
            spawn.Process(target=worker_main, name=f"pagedlm-worker-{rank}", daemon=True,
                          args=(config, rank, rank, f"file://{self._dir}/dist-init", self._dir))
            for rank in range(self.world_size)
        ]
        self._finalizer = weakref.finalize(self, _cleanup, self.procs, self._commands, self._results, self._ctx,
                                           self._dir)
        with _children_allowed():
            for proc in self.procs:
                proc.start()
        try:
            self._wait(set(range(self.world_size)))  # each worker reports: model loaded
        except BaseException:
            self.shutdown()
            raise
        logger.info("Started %d worker processes (pids %s)", self.world_size, [p.pid for p in self.procs])

    # ---- transport ------------------------------------------------------------------
    def _send(self, *msg: Any) -> None:
        self._check_alive()
        data = serial.encode(list(msg))
        for sock in self._commands:
            sock.send(data, copy=False)

    def _wait(self, ranks: set[int]) -> dict[int, Any]:
        """The next reply of each of ``ranks``; raises WorkerDiedError as soon as any worker
        dies or fails. A reply from another rank (or a later one) is kept for its own wait:
        with steps in flight the output rank answers each one unasked."""
        if self._dead is not None:  # e.g. a step still queued after the failure that stopped us
            raise WorkerDiedError(self._dead)
        results = {rank: self._early[rank].popleft() for rank in ranks if self._early.get(rank)}
        while len(results) < len(ranks):
            if self._results.poll(_POLL_MS):
                rank, ok, payload = serial.decode_raw(self._results.recv())
                if not ok:
                    self._report_failure(rank, payload)
                if rank in ranks and rank not in results:
                    results[rank] = payload
                else:
                    self._early.setdefault(rank, deque()).append(payload)
            else:
                self._check_alive()
        return results

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise WorkerDiedError(self._dead)
        dead = self._dead_ranks()
        if dead:
            self._fail(dead)

    def _dead_ranks(self) -> str:
        dead = [(rank, p.exitcode) for rank, p in enumerate(self.procs) if not p.is_alive()]
        return ("worker process(es) died: " + ", ".join(f"rank {r} (exit code {c})" for r, c in dead)) if dead else ""

    def _report_failure(self, rank: int, payload: str) -> None:
        """A worker raised. When a peer died, the survivor's collective fails first: name
        the dead rank (given a moment to be reaped) as the cause."""
        last_line = payload.strip().splitlines()[-1] if payload.strip() else "?"
        for _ in range(10):
            dead = self._dead_ranks()
            if dead:
                self._fail(f"{dead}; rank {rank} then failed: {last_line}")
            time.sleep(0.1)
        self._fail(f"worker rank {rank} failed:\n{payload}")

    def _fail(self, why: str) -> None:
        self._dead = why
        logger.error("Stopping the engine: %s", why)
        self.shutdown()
        raise WorkerDiedError(why)

    # ---- Executor ---------------------------------------------------------------------
    def _rpc(self, method: str, *args: object) -> list:
        self._send(method, *args)
        results = self._wait(set(range(self.world_size)))
        return [results[rank] for rank in range(self.world_size)]

    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        self._start_step(sched)
        return self._finish_step()

    def _start_step(self, sched: SchedulerOutput) -> None:
        # Each rank runs the step whole; the output rank replies the moment it is done.
        self._send("execute_model", serial.encode(sched))

    def _finish_step(self) -> ModelRunnerOutput:
        return serial.decode_runner_output(self._wait({self.output_rank})[self.output_rank])

    def launch(self, sched: SchedulerOutput) -> None:
        self._send("launch", serial.encode(sched))

    def take_output(self) -> ModelRunnerOutput:
        self._send("take_output")
        return serial.decode_runner_output(self._wait({self.output_rank})[self.output_rank])

    def sample_deferred(self, bitmask: np.ndarray) -> None:
        self._send("sample_deferred", serial.encode(bitmask))

    def check_health(self) -> None:
        self._check_alive()

    def shutdown(self) -> None:
        self._finalizer()


@contextlib.contextmanager
def _children_allowed() -> Iterator[None]:
    """The engine core may itself run as a daemonic process, which multiprocessing forbids
    to start children. Our workers need no daemon semantics from it: the executor's
    finalizer stops them, and they exit on their own when their parent disappears."""
    current = multiprocessing.current_process()
    was_daemon = current.daemon
    current._config["daemon"] = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        current._config["daemon"] = was_daemon  # type: ignore[attr-defined]


def _process_context(config: EngineConfig) -> multiprocessing.context.BaseContext:
    """On CPU the forkserver (process_context.py), which also imports this model's config
    class; on CUDA plain spawn."""
    return process_context.context(config.device_config.device, [type(config.model_config.hf_config).__module__])


def _cleanup(procs: list, commands: list, results: Any, ctx: zmq.Context, directory: str) -> None:
    """Ask the workers to exit, then make sure they have (bounded), then remove the sockets."""
    stop = serial.encode(["shutdown"])
    for proc, sock in zip(procs, commands):
        if proc.is_alive():
            try:
                sock.send(stop, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
    for proc in procs:
        if proc.pid is not None:
            proc.join(timeout=5)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    for sock in [*commands, results]:
        sock.close(linger=0)
    ctx.term()
    shutil.rmtree(directory, ignore_errors=True)


# ---- the worker process ---------------------------------------------------------------
def worker_main(config: EngineConfig, rank: int, local_rank: int, init_method: str, directory: str) -> None:
    from pagedlm.worker.distributed import destroy_distributed_environment
    from pagedlm.worker.worker import Worker

    process_context.set_process_name(f"pagedlm-worker{rank}")
    ctx = zmq.Context()
    commands = ctx.socket(zmq.PULL)
    commands.connect(f"ipc://{directory}/commands-{rank}")
    results = ctx.socket(zmq.PUSH)
    results.connect(f"ipc://{directory}/results")
    results.setsockopt(zmq.LINGER, 1000)

    def reply(ok: bool, payload: Any) -> None:
        results.send(serial.encode([rank, ok, payload]))

    try:
        worker = Worker(config, rank, local_rank, init_method)
        worker.init_device()
        worker.load_model()
        reply(True, None)
        _serve(worker, commands, reply)
    except Exception:  # noqa: BLE001 - reported to the engine, which stops every rank
        reply(False, traceback.format_exc())
    finally:
        destroy_distributed_environment()
        commands.close(linger=0)
        results.close()
        ctx.term()
        if not multiprocessing.parent_process().is_alive():  # nobody else will remove the sockets
            shutil.rmtree(directory, ignore_errors=True)


def _serve(worker: Any, commands: zmq.Socket, reply: Any) -> None:
    engine = multiprocessing.parent_process()  # the process that started this worker
    while True:
        if not commands.poll(1000):
            if not engine.is_alive():  # the engine is gone: nobody will ever read our results
                return
            continue
        method, *args = serial.decode_raw(commands.recv())
        if method == "shutdown":
            return
        if method in ("execute_model", "launch"):
            sched = serial.decode_scheduler_output(args[0])
            out = worker.execute_model(sched) if method == "execute_model" else worker.launch(sched)
        elif method == "take_output":
            out = worker.take_output()
        elif method == "sample_deferred":
            out = worker.sample_deferred(serial.decode_ndarray(serial.decode_raw(args[0])))
        elif method in WORKER_RPC_METHODS:
            reply(True, getattr(worker, method)(*args))
            continue
        else:
            raise ValueError(f"unknown worker command {method!r}")
        if out is not None:
            reply(True, serial.encode(out))
