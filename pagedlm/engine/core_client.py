"""How a frontend talks to the engine core: in this process, or in others over ZMQ.

- ``InprocClient``: the EngineCore lives here; ``get_output`` runs one step. The offline
  ``LLM``'s default (see docs/architecture.md for the measurement behind that choice).
- ``MPClient``: one engine-core process per data-parallel rank (``run_engine_core``), msgpack
  over ZMQ ``ipc://`` sockets in a private 0700 directory. A thread receives and decodes the
  cores' messages and hands them to the caller (a queue, or an asyncio loop); another watches
  the processes. A core that dies turns every waiting call into ``EngineDeadError``.
  Requests go to the least-loaded core (unfinished requests it holds); a request's n > 1
  children stay together on one core so they share their prompt's KV blocks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import tempfile
import threading
import time
from typing import Any

import msgspec
import zmq

from pagedlm.engine.messages import (
    AbortRequests,
    AddRequest,
    EngineCoreEvent,
    EngineCoreOutputs,
    EngineCoreRequest,
    EngineFailed,
    EngineReady,
    Shutdown,
    UtilityCall,
    UtilityResult,
)
from pagedlm.engine.request import Request

logger = logging.getLogger(__name__)

STARTUP_POLL_S = 0.5
SHUTDOWN_TIMEOUT_S = 5.0


class EngineDeadError(RuntimeError):
    """The engine core failed; no request can be served until the server restarts."""


class EngineStartupError(RuntimeError):
    """An engine core could not start. ``user_error``: the message says which setting to change."""

    def __init__(self, message: str, user_error: bool) -> None:
        super().__init__(message)
        self.user_error = user_error


class InprocClient:
    """The EngineCore in the caller's process and thread."""

    def __init__(self, config: Any) -> None:
        from pagedlm.engine.engine_core import EngineCore

        self.engine_core = EngineCore(config)

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        for request in requests:
            self.engine_core.add_request(Request.from_engine_core_request(request))

    def abort_requests(self, request_ids: list[str], stopped: bool = False) -> None:
        if stopped:
            self.engine_core.stop_requests(request_ids)
        else:
            self.engine_core.abort_requests(request_ids)

    def get_output(self) -> EngineCoreOutputs:
        outputs = self.engine_core.step() if self.engine_core.has_unfinished_requests() else []
        return EngineCoreOutputs(0, outputs, self.engine_core.stats(), time.time())

    def has_unfinished_requests(self) -> bool:
        return self.engine_core.has_unfinished_requests()

    def call_utility(self, method: str, *args: Any) -> list[Any]:
        return [getattr(self.engine_core, method)(*args)]

    def shutdown(self) -> None:
        self.engine_core.shutdown()  # stops worker processes / actors, if any


class MPClient:
    """Engine cores in their own processes. Sends from the caller's thread; receives on a
    thread of its own, which delivers to a queue (``get_output``) or, after
    ``attach_loop``, to an asyncio queue (``get_output_async``)."""

    def __init__(self, engine_args: Any, num_engines: int = 1) -> None:
        self.num_engines = num_engines
        self.ipc_dir = tempfile.mkdtemp(prefix="pagedlm-")  # mode 0700: only this user connects
        self.context = zmq.Context()
        self.output_socket = self._bind(zmq.PULL, "output")
        self.input_sockets = [self._bind(zmq.PUSH, f"input{i}") for i in range(num_engines)]
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(EngineCoreEvent)
        self.dead_error: EngineDeadError | None = None
        self.num_blocks: list[int] = [0] * num_engines
        self._engine_of: dict[str, int] = {}
        self._load = [0] * num_engines
        self._calls: dict[int, tuple[int, list[Any], concurrent.futures.Future]] = {}
        self._call_ids = itertools.count()
        self._outputs: queue.Queue[EngineCoreOutputs | EngineDeadError] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_outputs: asyncio.Queue | None = None
        self._closing = False
        self.processes = [self._spawn(engine_args, i) for i in range(num_engines)]
        try:
            self._wait_ready()
        except BaseException:
            self.shutdown()
            raise
        self._receiver = threading.Thread(target=self._receive, name="pagedlm-core-client", daemon=True)
        self._receiver.start()
        threading.Thread(target=self._watch_processes, name="pagedlm-core-monitor", daemon=True).start()

    # ------------------------------------------------------------------ start-up

    def _bind(self, kind: int, name: str) -> zmq.Socket:
        socket = self.context.socket(kind)
        socket.setsockopt(zmq.LINGER, 0)
        if kind == zmq.PUSH:
            socket.setsockopt(zmq.SNDHWM, 0)  # never block the event loop on a send
        socket.bind(f"ipc://{self.ipc_dir}/{name}")
        return socket

    def _spawn(self, engine_args: Any, index: int) -> multiprocessing.Process:
        from pagedlm.engine.core_proc import run_engine_core

        env = _device_env(engine_args, index, self.num_engines)
        process = multiprocessing.get_context("spawn").Process(
            target=run_engine_core, name=f"pagedlm-engine-core-{index}", daemon=True,
            args=(engine_args, index, f"ipc://{self.ipc_dir}/input{index}", f"ipc://{self.ipc_dir}/output",
                  os.getpid(), env))
        process.start()
        return process

    def _wait_ready(self) -> None:
        """Block until every core reports ready; a failure or an early exit raises."""
        waiting = set(range(self.num_engines))
        while waiting:
            if self.output_socket.poll(STARTUP_POLL_S * 1000):
                event = self.decoder.decode(self.output_socket.recv())
                if isinstance(event, EngineFailed):
                    raise EngineStartupError(event.message, event.user_error)
                if isinstance(event, EngineReady):
                    self.num_blocks[event.engine_index] = event.num_blocks
                    waiting.discard(event.engine_index)
                continue
            for i in waiting:
                if not self.processes[i].is_alive():
                    raise EngineStartupError(f"engine core {i} exited during start-up with code "
                                             f"{self.processes[i].exitcode}; see the log above", user_error=False)

    # ------------------------------------------------------------------ requests

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        """Queue requests on the least-loaded core (all on one: they are one parent's children)."""
        self._check_alive()
        index = min(range(self.num_engines), key=self._load.__getitem__)
        for request in requests:
            self._engine_of[request.request_id] = index
            self._load[index] += 1
            self.input_sockets[index].send(self.encoder.encode(AddRequest(request)), copy=False)

    def abort_requests(self, request_ids: list[str], stopped: bool = False) -> None:
        if self.dead_error is not None:
            return
        by_engine: dict[int, list[str]] = {}
        for request_id in request_ids:
            index = self._engine_of.pop(request_id, None)
            if index is not None:
                self._load[index] -= 1
                by_engine.setdefault(index, []).append(request_id)
        for index, ids in by_engine.items():
            self.input_sockets[index].send(self.encoder.encode(AbortRequests(ids, stopped)), copy=False)

    def _retire_finished(self, outputs: EngineCoreOutputs) -> None:
        for out in outputs.outputs:
            if out.finish_reason is not None and self._engine_of.pop(out.req_id, None) is not None:
                self._load[outputs.engine_index] -= 1

    def has_unfinished_requests(self) -> bool:
        return bool(self._engine_of)

    def _check_alive(self) -> None:
        if self.dead_error is not None:
            raise self.dead_error
        if self._closing:
            raise EngineDeadError("the engine is shutting down")

    # ------------------------------------------------------------------ outputs

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver outputs to ``get_output_async`` on ``loop`` from now on."""
        self._async_outputs = asyncio.Queue()
        self._loop = loop
        while not self._outputs.empty():
            self._async_outputs.put_nowait(self._outputs.get_nowait())

    def get_output(self, timeout: float | None = None) -> EngineCoreOutputs:
        item = self._outputs.get(timeout=timeout)
        if isinstance(item, EngineDeadError):
            self._outputs.put(item)  # every later call fails the same way
            raise item
        self._retire_finished(item)
        return item

    async def get_output_async(self) -> EngineCoreOutputs:
        assert self._async_outputs is not None, "attach_loop first"
        item = await self._async_outputs.get()
        if isinstance(item, EngineDeadError):
            self._async_outputs.put_nowait(item)
            raise item
        self._retire_finished(item)
        return item

    def _deliver(self, item: EngineCoreOutputs | EngineDeadError) -> None:
        if self._loop is None:
            self._outputs.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._async_outputs.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody reads any more
            pass

    def _receive(self) -> None:
        while not self._closing:
            try:
                if not self.output_socket.poll(200):
                    continue
                event = self.decoder.decode(self.output_socket.recv(copy=False).buffer)
            except zmq.ZMQError:
                return  # closed by shutdown
            if isinstance(event, EngineCoreOutputs):
                self._deliver(event)
            elif isinstance(event, UtilityResult):
                self._resolve_call(event)
            elif isinstance(event, EngineFailed):
                self._die(f"engine core {event.engine_index} failed: {event.message}")

    # ------------------------------------------------------------------ utilities

    def call_utility_future(self, method: str, *args: Any) -> concurrent.futures.Future:
        """Run ``method`` on every core; the future resolves to the list of their results."""
        self._check_alive()
        call_id = next(self._call_ids)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._calls[call_id] = (self.num_engines, [None] * self.num_engines, future)
        for socket in self.input_sockets:
            socket.send(self.encoder.encode(UtilityCall(call_id, method, list(args))))
        return future

    def call_utility(self, method: str, *args: Any) -> list[Any]:
        return self.call_utility_future(method, *args).result(timeout=60)

    def _resolve_call(self, result: UtilityResult) -> None:
        entry = self._calls.get(result.call_id)
        if entry is None:
            return
        remaining, results, future = entry
        if result.error is not None:
            self._calls.pop(result.call_id)
            future.set_exception(RuntimeError(result.error))
            return
        results[result.engine_index] = result.result
        if remaining == 1:
            self._calls.pop(result.call_id)
            future.set_result(results)
        else:
            self._calls[result.call_id] = (remaining - 1, results, future)

    # ------------------------------------------------------------------ failure and shutdown

    def _watch_processes(self) -> None:
        sentinels = {p.sentinel: i for i, p in enumerate(self.processes)}
        ready = multiprocessing.connection.wait(list(sentinels))
        if self._closing:
            return
        index = sentinels[ready[0]]
        time.sleep(0.2)  # a dying core's own notice, if it sent one, says more than the exit code
        self._die(f"engine core {index} exited unexpectedly (exit code {self.processes[index].exitcode})")

    def _die(self, message: str) -> None:
        if self.dead_error is not None or self._closing:
            return
        logger.error("%s; the engine is dead", message)
        self.dead_error = EngineDeadError(message)
        for _, _, future in list(self._calls.values()):
            if not future.done():
                future.set_exception(self.dead_error)
        self._calls.clear()
        self._deliver(self.dead_error)

    def shutdown(self) -> None:
        if self._closing:
            return
        self._closing = True
        for socket in self.input_sockets:
            try:
                socket.send(self.encoder.encode(Shutdown()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(2)
        self.context.destroy(linger=0)
        shutil.rmtree(self.ipc_dir, ignore_errors=True)


def _device_env(engine_args: Any, index: int, num_engines: int) -> dict[str, str]:
    """Data-parallel rank ``index`` gets its own GPUs (tensor_parallel_size of them)."""
    if num_engines == 1 or getattr(engine_args, "device", "auto") == "cpu":
        return {}
    # Each core's executor runs tp x pp ranks, one GPU each.
    per_engine = getattr(engine_args, "tensor_parallel_size", 1) * getattr(engine_args, "pipeline_parallel_size", 1)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(num_engines * per_engine)]
    mine = devices[index * per_engine:(index + 1) * per_engine]
    return {"CUDA_VISIBLE_DEVICES": ",".join(mine)}
