"""The engine core in its own process: a busy loop around EngineCore, fed over ZMQ.

Three threads, so the GIL-heavy step loop never waits on sockets:
- the input thread receives msgpack frames, decodes them into EngineCoreInput messages and
  queues them (a request whose fields do not decode into their types is failed back to its
  frontend with an error, never silently dropped: its client would wait for ever);
- the main thread applies queued inputs, steps the engine while there is work and blocks on
  the input queue when there is none (no spinning while idle), waking every
  IDLE_HEALTH_CHECK_S to check that its workers are alive: a worker that dies while nothing
  runs fails the engine at once, not when the next request reaches it;
- the output thread encodes each step's EngineCoreOutputs and sends them: with several
  frontends (``pagedlm serve --api-server-count N``), each gets the outputs of the requests it
  sent and every step's stats.

The process dies with its frontend: a watchdog thread exits when the parent process is gone,
so a killed API server never leaves an orphan holding the GPU.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import msgspec
import zmq

from pagedlm import process_context
from pagedlm.engine.core_launcher import exit_with_parent
from pagedlm.engine.gc_heap import freeze_startup_heap
from pagedlm.engine.messages import (
    AbortRequests,
    AddRequest,
    EngineCoreEvent,
    EngineCoreRequest,
    EngineCoreInput,
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineFailed,
    EngineReady,
    Shutdown,
    UtilityCall,
    UtilityResult,
)
from pagedlm.engine.request import Request
from pagedlm.engine.sleep_mode import EngineSleepingError, SleepModeError

logger = logging.getLogger("pagedlm.engine_core")

IDLE_HEALTH_CHECK_S = 0.5


class EngineCoreProc:
    """Owns an EngineCore and its sockets; ``run`` returns when asked to shut down."""

    UTILITY_METHODS = ("reset_prefix_cache", "get_stats", "ping", "sleep", "wake_up", "is_sleeping",
                       "collective_rpc")

    def __init__(self, core: Any, engine_index: int, input_socket: zmq.Socket,
                 output_sockets: list[zmq.Socket]) -> None:
        self.core = core
        self.engine_index = engine_index
        self.input_queue: queue.Queue[EngineCoreInput] = queue.Queue()
        self.output_queue: queue.Queue[EngineCoreEvent | None] = queue.Queue()
        self.num_clients = len(output_sockets)
        # request id -> the frontend that sent it (kept only when there are several)
        self._client_of: dict[str, int] = {}
        self._stop = False
        self._input_thread = threading.Thread(target=self._receive_inputs, args=(input_socket,),
                                              name="pagedlm-core-input", daemon=True)
        self._output_thread = threading.Thread(target=self._send_outputs, args=(output_sockets,),
                                               name="pagedlm-core-output", daemon=True)

    def run(self) -> None:
        self._input_thread.start()
        self._output_thread.start()
        try:
            while not self._stop:
                self._process_inputs(block=not self.core.has_unfinished_requests())
                if self._stop:
                    break
                outputs = self.core.step() if self.core.has_unfinished_requests() else []
                # Stats go with every step (and after inputs that changed them while idle), so
                # the frontend's gauges read 0 as soon as the last request is gone.
                self.output_queue.put(EngineCoreOutputs(self.engine_index, outputs, self.core.stats(), time.time()))
        finally:
            self.output_queue.put(None)
            self._output_thread.join(timeout=5)

    def _process_inputs(self, block: bool) -> None:
        while block:
            try:
                self._apply(self.input_queue.get(timeout=IDLE_HEALTH_CHECK_S))
                break
            except queue.Empty:
                self.core.check_health()  # raises when a worker is gone: run()'s caller reports it
        while True:
            try:
                message = self.input_queue.get_nowait()
            except queue.Empty:
                return
            self._apply(message)

    def _apply(self, message: EngineCoreInput) -> None:
        if isinstance(message, AddRequest):
            if self.num_clients > 1:
                self._client_of[message.request.request_id] = message.request.client_index
            try:
                self.core.add_request(Request.from_engine_core_request(message.request))
            except EngineSleepingError as e:  # failed back to its frontend, as an undecodable one
                failed = EngineCoreOutput(message.request.request_id, [], finish_reason="error", error=str(e))
                self.output_queue.put(EngineCoreOutputs(self.engine_index, [failed], self.core.stats(), time.time()))
        elif isinstance(message, AbortRequests):
            if self.num_clients > 1:  # the frontend has forgotten them: later outputs are dropped
                for request_id in message.request_ids:
                    self._client_of.pop(request_id, None)
            if message.stopped:
                self.core.stop_requests(message.request_ids)
            else:
                self.core.abort_requests(message.request_ids)
        elif isinstance(message, UtilityCall):
            self.output_queue.put(self._call_utility(message))
        elif isinstance(message, UndecodableRequest):
            if self.num_clients > 1:
                self._client_of[message.request_id] = message.client_index
            failed = EngineCoreOutput(message.request_id, [], finish_reason="error", error=message.error)
            self.output_queue.put(EngineCoreOutputs(self.engine_index, [failed], self.core.stats(), time.time()))
        elif isinstance(message, Shutdown):
            self._stop = True

    def _call_utility(self, call: UtilityCall) -> UtilityResult:
        result = UtilityResult(self.engine_index, call.call_id)
        if call.method not in self.UTILITY_METHODS:
            result.error = f"unknown utility method {call.method!r}"
        elif call.method == "ping":
            result.result = True
        elif call.method == "get_stats":
            result.result = msgspec.to_builtins(self.core.stats())
        else:
            try:
                result.result = getattr(self.core, call.method)(*call.args)
            except (SleepModeError, ValueError, NotImplementedError) as e:  # the caller's error, not the core's
                result.error = f"{type(e).__name__}: {e}"
        return RoutedResult(call.client_index, result)

    def _receive_inputs(self, socket: zmq.Socket) -> None:
        decoder = msgspec.msgpack.Decoder(EngineCoreInput)
        while True:
            frame = socket.recv(copy=False)
            try:
                self.input_queue.put(decoder.decode(frame.buffer))
            except msgspec.ValidationError as e:
                rejected = undecodable_request(frame.buffer, str(e))
                if rejected is None:
                    logger.exception("dropped a malformed engine-core message")
                else:
                    logger.error("request %s failed: the engine core cannot decode it (%s)", rejected.request_id, e)
                    self.input_queue.put(rejected)

    def _send_outputs(self, sockets: list[zmq.Socket]) -> None:
        encoder = msgspec.msgpack.Encoder()
        while True:
            message = self.output_queue.get()
            if message is None:
                return
            if isinstance(message, RoutedResult):
                sockets[message.client_index].send(encoder.encode(message.result), copy=False)
            elif len(sockets) == 1:
                sockets[0].send(encoder.encode(message), copy=False)
            else:
                for client_index, outputs in enumerate(self._route(message)):
                    sockets[client_index].send(encoder.encode(outputs), copy=False)

    def _route(self, message: EngineCoreOutputs) -> list[EngineCoreOutputs]:
        """One step's outputs split by frontend; every frontend gets the step's stats. Outputs
        of requests their frontend aborted are dropped."""
        per_client: list[list[EngineCoreOutput]] = [[] for _ in range(self.num_clients)]
        client_of = self._client_of
        for output in message.outputs:
            client = client_of.pop(output.req_id, None) if output.finish_reason is not None else \
                client_of.get(output.req_id)
            if client is not None:
                per_client[client].append(output)
        return [EngineCoreOutputs(message.engine_index, outputs, message.scheduler_stats, message.timestamp)
                for outputs in per_client]


class UndecodableRequest(NamedTuple):
    """An AddRequest whose fields did not decode into their types (never sent as such): the core
    fails it back to its frontend."""

    request_id: str
    client_index: int
    error: str


_CLIENT_INDEX_FIELD = EngineCoreRequest.__struct_fields__.index("client_index")


def undecodable_request(frame: Any, error: str) -> UndecodableRequest | None:
    """The request of an AddRequest frame that failed typed decoding ([tag, [request_id, ...]]
    as plain msgpack), or None when the frame is not one (or has no usable id)."""
    try:
        raw = msgspec.msgpack.decode(frame)
    except msgspec.DecodeError:
        return None
    if not (isinstance(raw, list) and len(raw) == 2 and raw[0] == "add" and isinstance(raw[1], list) and raw[1]
            and isinstance(raw[1][0], str)):
        return None
    fields = raw[1]
    client = fields[_CLIENT_INDEX_FIELD] if len(fields) > _CLIENT_INDEX_FIELD else 0
    return UndecodableRequest(fields[0], client if isinstance(client, int) else 0,
                              f"The request could not be passed to the engine: {error}")


class RoutedResult(NamedTuple):
    """A utility result on its way to the frontend that asked (never sent as such)."""

    client_index: int
    result: UtilityResult


def run_engine_core(engine_args: Any, engine_index: int, input_address: str, output_addresses: list[str],
                    ready_pipe: Connection, parent_pid: int, env: dict[str, str]) -> None:
    """Entry point of an engine-core process (spawned by core_launcher.EngineCores): binds
    ``input_address``, connects to each frontend's output address, reports ready (or why it
    could not start) on ``ready_pipe``, then serves until told to shut down. ``env``: the
    whole environment to run with (process_context.child_env)."""
    process_context.apply_env(env)
    process_context.set_process_name(f"pagedlm-core{engine_index}")
    process_context.thread_lock_progress_bars()
    # Ctrl-C in a terminal signals the whole process group: the frontend owns shutdown and
    # tells the core to stop (or disappears, which the watchdog notices).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    from pagedlm.logger import configure_logging

    configure_logging()
    sockets_dir = os.path.dirname(input_address.removeprefix("ipc://"))  # CoreAddresses: always ipc://
    exit_with_parent(parent_pid, f"engine core {engine_index}", (sockets_dir,))
    context = zmq.Context()
    output_sockets = []
    for address in output_addresses:
        socket = context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, 2000)
        socket.connect(address)
        output_sockets.append(socket)
    input_socket = context.socket(zmq.PULL)
    input_socket.bind(input_address)
    encoder = msgspec.msgpack.Encoder()
    try:
        core = _build_core(engine_args)
    except BaseException as e:  # noqa: BLE001 - reported to the launcher, which exits with it
        user_error = isinstance(e, ValueError)
        if not user_error:
            logger.exception("Engine core %d failed to start", engine_index)
        ready_pipe.send_bytes(encoder.encode(EngineFailed(
            engine_index, str(e) if user_error else f"{type(e).__name__}: {e}", during_startup=True,
            user_error=user_error)))
        sys.exit(1)
    freeze_startup_heap()  # this process hosts one engine for its life (gc_heap.py)
    ready_pipe.send_bytes(encoder.encode(EngineReady(engine_index, core.stats().num_total_blocks)))
    ready_pipe.close()
    proc = EngineCoreProc(core, engine_index, input_socket, output_sockets)
    try:
        proc.run()
    except BaseException as e:  # noqa: BLE001 - a dead core tells its frontends before exiting
        logger.exception("Engine core %d failed; it is dead", engine_index)
        failed = encoder.encode(EngineFailed(engine_index, f"{type(e).__name__}: {e}"))
        for socket in output_sockets:
            socket.send(failed)
        time.sleep(0.2)  # let the notice leave before the process goes
        core.shutdown()  # os._exit skips finalizers: stop the worker processes first
        os._exit(1)
    core.shutdown()
    os._exit(0)


def _build_core(engine_args: Any) -> Any:
    from pagedlm.engine.engine_core import EngineCore

    return EngineCore(engine_args.create_engine_config())
