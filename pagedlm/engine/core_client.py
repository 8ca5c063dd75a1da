"""How a frontend talks to the engine core: in this process, or in others over ZMQ.

- ``InprocClient``: the EngineCore lives here; ``get_output`` runs one step. The offline
  ``LLM``'s default (see docs/architecture.md for the measurement behind that choice).
- ``MPClient``: one engine-core process per data-parallel rank (``run_engine_core``), msgpack
  over ZMQ ``ipc://`` sockets in a private 0700 directory (``core_launcher``). The client
  starts its own cores, or joins cores that a server's launcher started for several API
  server processes (``cores=``, one ``client_index`` each). A thread receives and decodes the
  cores' messages and hands them to the caller (a queue, or an asyncio loop); another watches
  the processes it started. A core that dies turns every waiting call into ``EngineDeadError``.
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
import queue
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
    UtilityCall,
    UtilityResult,
)
from pagedlm.engine.core_launcher import CoreAddresses, EngineCores, EngineStartupError, process_exists
from pagedlm.engine.request import Request

__all__ = ["EngineDeadError", "EngineStartupError", "InprocClient", "MPClient"]

logger = logging.getLogger(__name__)

PID_POLL_S = 0.5
RECEIVER_JOIN_S = 5.0  # how long shutdown waits for the receiver thread (it polls in 200 ms steps)


class EngineDeadError(RuntimeError):
    """The engine core failed; no request can be served until the server restarts."""


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

    def __init__(self, engine_args: Any, num_engines: int = 1, cores: CoreAddresses | None = None,
                 client_index: int = 0) -> None:
        """Starts ``num_engines`` cores of its own, or (``cores``) joins running ones as frontend
        ``client_index``; the process that started those stops them."""
        self._own_cores = EngineCores(engine_args, num_engines) if cores is None else None
        addresses = self._own_cores.addresses if self._own_cores is not None else cores
        if not 0 <= client_index < addresses.num_clients:
            raise ValueError(f"client_index {client_index} is not one of the cores' {addresses.num_clients} frontends")
        self.num_engines = addresses.num_engines
        self.client_index = client_index
        self.num_blocks = list(addresses.num_blocks)
        self.context = zmq.Context()
        self.output_socket = self.context.socket(zmq.PULL)
        self.output_socket.setsockopt(zmq.LINGER, 0)
        self.output_socket.bind(addresses.output(client_index))
        self.input_sockets = []
        for index in range(self.num_engines):
            socket = self.context.socket(zmq.PUSH)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.SNDHWM, 0)  # never block the event loop on a send
            socket.connect(addresses.input(index))
            self.input_sockets.append(socket)
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder(EngineCoreEvent)
        self.dead_error: EngineDeadError | None = None
        self._engine_of: dict[str, int] = {}
        self._load = [0] * self.num_engines
        self._calls: dict[int, tuple[int, list[Any], concurrent.futures.Future]] = {}
        self._call_ids = itertools.count()
        self._outputs: queue.Queue[EngineCoreOutputs | EngineDeadError] = queue.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._async_outputs: asyncio.Queue | None = None
        self._closing = False
        self._receiver = threading.Thread(target=self._receive, name="pagedlm-core-client", daemon=True)
        self._receiver.start()
        self._core_pids = addresses.core_pids
        watch = self._watch_processes if self._own_cores is not None else self._watch_pids
        threading.Thread(target=watch, name="pagedlm-core-monitor", daemon=True).start()

    @property
    def processes(self) -> list[multiprocessing.Process]:
        """The core processes this client started (none when it joined a launcher's)."""
        return self._own_cores.processes if self._own_cores is not None else []

    # ------------------------------------------------------------------ requests

    def add_requests(self, requests: list[EngineCoreRequest]) -> None:
        """Queue requests on the least-loaded core (all on one: they are one parent's children)."""
        self._check_alive()
        index = min(range(self.num_engines), key=self._load.__getitem__)
        for request in requests:
            request.client_index = self.client_index
        # Encoded first: a request that cannot be (an int past 64 bits) leaves nothing registered.
        frames = [self.encoder.encode(AddRequest(request)) for request in requests]
        for request, frame in zip(requests, frames):
            self._engine_of[request.request_id] = index
            self._load[index] += 1
            self.input_sockets[index].send(frame, copy=False)

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
            socket.send(self.encoder.encode(UtilityCall(call_id, method, list(args), self.client_index)))
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

    def _watch_pids(self) -> None:
        """Cores another process started: gone once they have exited (reaped or not)."""
        while not self._closing:
            for index, pid in enumerate(self._core_pids):
                if not process_exists(pid):
                    time.sleep(0.2)  # a dying core's own notice, if it sent one, says more
                    self._die(f"engine core {index} exited unexpectedly")
                    return
            time.sleep(PID_POLL_S)

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
        """Close the sockets; stop the cores when this client started them. The receiver
        thread is joined first: a ZMQ socket is not thread-safe, and closing one under a
        thread still polling it could crash the process."""
        if self._closing:
            return
        self._closing = True
        if self._own_cores is not None:
            self._own_cores.shutdown()
        if self._receiver is not threading.current_thread():
            self._receiver.join(timeout=RECEIVER_JOIN_S)  # its poll wakes within 200 ms, sees _closing
            if self._receiver.is_alive():  # left open rather than closed under it: they go with the process
                logger.warning("the core client's receiver thread did not stop within %.0f s; its sockets stay "
                               "open", RECEIVER_JOIN_S)
                return
        self.context.destroy(linger=0)


