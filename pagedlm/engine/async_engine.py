"""AsyncEngine: the LLMEngine stepping in a background thread, served to asyncio callers.

Only the engine thread touches the LLMEngine. Callers on the event loop hand it adds and
aborts through a queue of operations and wake it with a condition variable; when there is
nothing to run it sleeps on that condition (no busy loop). After each step it delivers the
new RequestOutputs to each request's asyncio queue with ``loop.call_soon_threadsafe`` (one
call per step, not per request). Outputs are cumulative (text and token ids so far), so a
slow reader may skip to the newest one without losing anything.

If the engine thread fails, the engine is dead: every in-flight request and every later
``add_request`` raises EngineDeadError (the server answers 500, /health 503) instead of
hanging.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator, Protocol

from pagedlm.engine.input_processor import InvalidRequestError, PromptType, load_tokenizer
from pagedlm.engine.llm_engine import EngineStats, LLMEngine
from pagedlm.engine_args import EngineArgs
from pagedlm.outputs import RequestOutput
from pagedlm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    """The engine thread failed; no request can be served until the server restarts."""


class RequestFailedError(RuntimeError):
    """The engine finished one request with an error. ``status`` is the HTTP status a server
    should answer with: 400 when the request itself cannot be served (e.g. it needs more KV
    cache blocks than exist), 500 for an unexpected failure."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class StatLogger(Protocol):
    """Receives engine-thread events (see pagedlm.metrics.PrometheusStatLogger)."""

    def record_outputs(self, outputs: list[RequestOutput], now: float) -> None: ...
    def record_aborts(self, request_ids: list[str]) -> None: ...
    def record_stats(self, stats: EngineStats) -> None: ...


@dataclass
class _AddOp:
    request_id: str
    prompt: PromptType
    params: SamplingParams
    arrival_time: float
    accepted: asyncio.Future  # resolved on the caller's loop: None or the validation error


@dataclass
class _AbortOp:
    request_ids: list[str]


class RequestStream:
    """The outputs of one request, as an async iterator. Ends after the finished output;
    raises EngineDeadError / RequestFailedError if the engine or the request failed."""

    def __init__(self, request_id: str, engine: "AsyncEngine", loop: asyncio.AbstractEventLoop) -> None:
        self.request_id = request_id
        self.loop = loop
        self.finished = False
        self._engine = engine
        self._queue: asyncio.Queue[RequestOutput | BaseException | None] = asyncio.Queue()

    def put(self, item: RequestOutput | BaseException | None) -> None:
        """Event loop only. None means 'cancelled': the iteration stops quietly."""
        self._queue.put_nowait(item)

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self.finished:
            raise StopAsyncIteration
        item = await self._queue.get()
        # Outputs are cumulative: skip to the newest one already queued (errors win).
        while not self._queue.empty() and isinstance(item, RequestOutput) and not item.finished:
            item = self._queue.get_nowait()
        if item is None:
            self.finished = True
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        if item.finished:
            self.finished = True
        return item

    def cancel(self) -> None:
        """Abort the request (idempotent) and end the iteration."""
        if not self.finished:
            self._engine.abort(self.request_id)
            self.put(None)


class AsyncEngine:
    def __init__(self, engine: LLMEngine, stat_logger: StatLogger | None = None) -> None:
        self.engine = engine
        self.model_config = engine.model_config
        # The frontend gets its own tokenizer: HF fast tokenizers are not safe to share
        # between threads ("Already borrowed"), and the engine thread uses the engine's.
        self.tokenizer = load_tokenizer(engine.model_config)
        self.stat_logger = stat_logger
        self._cond = threading.Condition()
        self._ops: deque[_AddOp | _AbortOp] = deque()
        self._streams: dict[str, RequestStream] = {}
        self._stop = False
        self._dead: BaseException | None = None
        self._stats: EngineStats = engine.get_stats()
        self._inflight_ops: list[_AddOp | _AbortOp] = []
        self._thread = threading.Thread(target=self._run, name="pagedlm-engine", daemon=True)

    @classmethod
    def from_engine_args(cls, args: EngineArgs, stat_logger: StatLogger | None = None) -> "AsyncEngine":
        return cls(LLMEngine.from_engine_args(args), stat_logger)

    # ------------------------------------------------------------------ caller side (event loop)

    def start(self) -> "AsyncEngine":
        if not self._thread.is_alive():
            self._thread.start()
        return self

    @property
    def is_dead(self) -> bool:
        return self._dead is not None

    def get_stats(self) -> EngineStats:
        """The snapshot taken after the engine thread's latest iteration."""
        return self._stats

    async def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams,
                          arrival_time: float | None = None) -> RequestStream:
        """Queue a request; returns once the engine accepted it. Raises InvalidRequestError
        (a ValueError) on bad input and EngineDeadError when the engine has failed."""
        loop = asyncio.get_running_loop()
        stream = RequestStream(request_id, self, loop)
        accepted: asyncio.Future = loop.create_future()
        with self._cond:
            self._check_alive()  # under the lock: the thread cannot exit between check and queue
            if request_id in self._streams:
                raise InvalidRequestError(f"request id {request_id!r} is already in use")
            self._streams[request_id] = stream
            arrival = arrival_time if arrival_time is not None else time.time()
            self._ops.append(_AddOp(request_id, prompt, params, arrival, accepted))
            self._cond.notify()
        try:
            await accepted
        except asyncio.CancelledError:
            self.abort(request_id)
            raise
        except BaseException:
            self._forget(request_id)
            raise
        return stream

    async def generate(self, prompt: PromptType, params: SamplingParams, request_id: str,
                       arrival_time: float | None = None) -> AsyncIterator[RequestOutput]:
        """add_request + iterate; aborts the request if the caller stops early."""
        stream = await self.add_request(request_id, prompt, params, arrival_time)
        try:
            async for output in stream:
                yield output
        finally:
            stream.cancel()

    def abort(self, request_id: str | list[str]) -> None:
        """Abort requests (thread-safe, idempotent); their KV blocks go back to the pool."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        with self._cond:
            live = [rid for rid in ids if self._streams.pop(rid, None) is not None]
            if live and self._dead is None:
                self._ops.append(_AbortOp(live))
                self._cond.notify()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine has failed and cannot serve requests: {self._dead!r}")
        if self._stop:
            raise EngineDeadError("the engine is shutting down")

    def _forget(self, request_id: str) -> None:
        with self._cond:
            self._streams.pop(request_id, None)

    # ------------------------------------------------------------------ engine thread

    def _run(self) -> None:
        try:
            while True:
                ops = self._wait_for_work()
                if ops is None:  # shutdown: nobody will step these any more
                    self._fail_all(EngineDeadError("the engine was shut down"))
                    return
                self._inflight_ops = ops  # resolved by _die if applying them fails midway
                self._apply(ops)
                self._inflight_ops = []
                outputs: list[RequestOutput] = []
                if self.engine.has_unfinished_requests():
                    outputs = self.engine.step()
                # Stats first: a client that sees its request finish must not then read
                # metrics that still count it as running.
                self._record_stats()
                if outputs:
                    self._dispatch(outputs)
        except BaseException as e:  # noqa: BLE001 - any failure kills the engine, loudly
            logger.exception("Engine thread failed; the engine is dead")
            self._die(e)

    def _wait_for_work(self) -> list[_AddOp | _AbortOp] | None:
        with self._cond:
            while not self._ops and not self._stop and not self.engine.has_unfinished_requests():
                self._cond.wait()
            if self._stop:
                return None
            ops = list(self._ops)
            self._ops.clear()
            return ops

    def _apply(self, ops: list[_AddOp | _AbortOp]) -> None:
        aborted: list[str] = []
        for op in ops:
            if isinstance(op, _AbortOp):
                self.engine.abort_request(op.request_ids)
                aborted.extend(op.request_ids)
                continue
            try:
                self.engine.add_request(op.request_id, op.prompt, op.params, op.arrival_time)
                error: BaseException | None = None
            except ValueError as e:  # InvalidRequestError and SamplingParams checks
                error = e if isinstance(e, InvalidRequestError) else InvalidRequestError(str(e))
            except Exception as e:  # noqa: BLE001 - one bad request must not kill the engine
                logger.exception("add_request failed for %s", op.request_id)
                error = RequestFailedError(f"could not add the request: {e}")
            _resolve(op.accepted, error)
        if aborted:
            self._log_stats("record_aborts", aborted)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        self._log_stats("record_outputs", outputs, time.time())
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, Any]]] = {}
        with self._cond:
            for output in outputs:
                stream = self._streams.get(output.request_id)
                if stream is None:  # aborted while the step ran
                    continue
                item: Any = output
                if output.error is not None:
                    item = RequestFailedError(output.error, status=400)
                if output.finished:
                    del self._streams[output.request_id]
                by_loop.setdefault(stream.loop, []).append((stream, item))
        for loop, items in by_loop.items():
            _call_soon(loop, _deliver, items)

    def _record_stats(self) -> None:
        self._stats = self.engine.get_stats()
        self._log_stats("record_stats", self._stats)

    def _log_stats(self, method: str, *args: Any) -> None:
        # Metrics must never take serving down: a failing logger is reported, not raised.
        if self.stat_logger is None:
            return
        try:
            getattr(self.stat_logger, method)(*args)
        except Exception:  # noqa: BLE001
            logger.exception("stat logger %s failed", method)

    def _die(self, error: BaseException) -> None:
        with self._cond:
            self._dead = error
        self._fail_all(EngineDeadError(f"the engine failed: {type(error).__name__}: {error}"))

    def _fail_all(self, dead: EngineDeadError) -> None:
        """Every waiting caller gets ``dead`` instead of waiting forever."""
        with self._cond:
            streams = list(self._streams.values())
            self._streams.clear()
            pending = [op for op in [*self._inflight_ops, *self._ops] if isinstance(op, _AddOp)]
            self._ops.clear()
        for op in pending:
            _resolve(op.accepted, dead)
        for stream in streams:
            _call_soon(stream.loop, _deliver, [(stream, dead)])


def _deliver(items: list[tuple[RequestStream, Any]]) -> None:
    for stream, item in items:
        stream.put(item)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _resolve(future: asyncio.Future, error: BaseException | None) -> None:
    def settle() -> None:
        if future.done():  # the caller gave up (cancelled) meanwhile
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    _call_soon(future.get_loop(), settle)
