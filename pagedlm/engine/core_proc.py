"""The engine core in its own process: a busy loop around EngineCore, fed over ZMQ.

Three threads, so the GIL-heavy step loop never waits on sockets:
- the input thread receives msgpack frames, decodes them into EngineCoreInput messages and
  queues them;
- the main thread applies queued inputs, steps the engine while there is work and blocks on
  the input queue when there is none (no spinning while idle);
- the output thread encodes each step's EngineCoreOutputs and sends them.

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
from typing import Any

import msgspec
import zmq

from pagedlm.engine.gc_heap import freeze_startup_heap
from pagedlm.engine.messages import (
    AbortRequests,
    AddRequest,
    EngineCoreEvent,
    EngineCoreInput,
    EngineCoreOutputs,
    EngineFailed,
    EngineReady,
    Shutdown,
    UtilityCall,
    UtilityResult,
)
from pagedlm.engine.request import Request

logger = logging.getLogger("pagedlm.engine_core")

PARENT_POLL_S = 0.5


class EngineCoreProc:
    """Owns an EngineCore and its sockets; ``run`` returns when asked to shut down."""

    UTILITY_METHODS = ("reset_prefix_cache", "get_stats", "ping")

    def __init__(self, core: Any, engine_index: int, input_socket: zmq.Socket, output_socket: zmq.Socket) -> None:
        self.core = core
        self.engine_index = engine_index
        self.input_queue: queue.Queue[EngineCoreInput] = queue.Queue()
        self.output_queue: queue.Queue[EngineCoreEvent | None] = queue.Queue()
        self._stop = False
        self._input_thread = threading.Thread(target=self._receive_inputs, args=(input_socket,),
                                              name="pagedlm-core-input", daemon=True)
        self._output_thread = threading.Thread(target=self._send_outputs, args=(output_socket,),
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
        if block:
            self._apply(self.input_queue.get())
        while True:
            try:
                message = self.input_queue.get_nowait()
            except queue.Empty:
                return
            self._apply(message)

    def _apply(self, message: EngineCoreInput) -> None:
        if isinstance(message, AddRequest):
            self.core.add_request(Request.from_engine_core_request(message.request))
        elif isinstance(message, AbortRequests):
            if message.stopped:
                self.core.stop_requests(message.request_ids)
            else:
                self.core.abort_requests(message.request_ids)
        elif isinstance(message, UtilityCall):
            self.output_queue.put(self._call_utility(message))
        elif isinstance(message, Shutdown):
            self._stop = True

    def _call_utility(self, call: UtilityCall) -> UtilityResult:
        if call.method not in self.UTILITY_METHODS:
            return UtilityResult(self.engine_index, call.call_id, error=f"unknown utility method {call.method!r}")
        if call.method == "ping":
            return UtilityResult(self.engine_index, call.call_id, result=True)
        if call.method == "get_stats":
            return UtilityResult(self.engine_index, call.call_id, result=msgspec.to_builtins(self.core.stats()))
        return UtilityResult(self.engine_index, call.call_id, result=getattr(self.core, call.method)(*call.args))

    def _receive_inputs(self, socket: zmq.Socket) -> None:
        decoder = msgspec.msgpack.Decoder(EngineCoreInput)
        while True:
            frame = socket.recv(copy=False)
            try:
                self.input_queue.put(decoder.decode(frame.buffer))
            except msgspec.ValidationError:
                logger.exception("dropped a malformed engine-core message")

    def _send_outputs(self, socket: zmq.Socket) -> None:
        encoder = msgspec.msgpack.Encoder()
        while True:
            message = self.output_queue.get()
            if message is None:
                return
            socket.send(encoder.encode(message), copy=False)


def run_engine_core(engine_args: Any, engine_index: int, input_address: str, output_address: str,
                    parent_pid: int, env: dict[str, str]) -> None:
    """Entry point of the engine-core process (spawned by the frontend's MP client)."""
    os.environ.update(env)
    # Ctrl-C in a terminal signals the whole process group: the frontend owns shutdown and
    # tells the core to stop (or disappears, which the watchdog notices).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    from pagedlm.logger import configure_logging

    configure_logging()
    _start_parent_watchdog(parent_pid)
    context = zmq.Context()
    output_socket = context.socket(zmq.PUSH)
    output_socket.setsockopt(zmq.LINGER, 2000)
    output_socket.connect(output_address)
    input_socket = context.socket(zmq.PULL)
    input_socket.connect(input_address)
    encoder = msgspec.msgpack.Encoder()
    try:
        core = _build_core(engine_args)
    except BaseException as e:  # noqa: BLE001 - reported to the frontend, which exits with it
        user_error = isinstance(e, ValueError)
        if not user_error:
            logger.exception("Engine core %d failed to start", engine_index)
        output_socket.send(encoder.encode(EngineFailed(engine_index, str(e) if user_error else f"{type(e).__name__}: {e}",
                                                       during_startup=True, user_error=user_error)))
        output_socket.close()
        sys.exit(1)
    freeze_startup_heap()  # this process hosts one engine for its life (gc_heap.py)
    output_socket.send(encoder.encode(EngineReady(engine_index, core.stats().num_total_blocks)))
    proc = EngineCoreProc(core, engine_index, input_socket, output_socket)
    try:
        proc.run()
    except BaseException as e:  # noqa: BLE001 - a dead core tells the frontend before exiting
        logger.exception("Engine core %d failed; it is dead", engine_index)
        output_socket.send(encoder.encode(EngineFailed(engine_index, f"{type(e).__name__}: {e}")))
        time.sleep(0.2)  # let the notice leave before the process goes
        core.shutdown()  # os._exit skips finalizers: stop the worker processes first
        os._exit(1)
    core.shutdown()
    os._exit(0)


def _build_core(engine_args: Any) -> Any:
    from pagedlm.engine.engine_core import EngineCore

    return EngineCore(engine_args.create_engine_config())


def _start_parent_watchdog(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent_pid:
                logger.warning("The frontend process %d is gone; the engine core exits", parent_pid)
                os._exit(1)

    threading.Thread(target=watch, name="pagedlm-parent-watchdog", daemon=True).start()
