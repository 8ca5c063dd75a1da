"""AsyncLLM: the server's frontend. Text work here, scheduling and the model in engine-core
processes reached through ``MPClient``.

On the way in, prompts are tokenized (and chat templates rendered) on a tokenizer thread, so
a huge prompt never stalls the event loop. On the way out, one asyncio task reads each step's
``EngineCoreOutputs``, detokenizes, checks stop strings (a hit sends the core an ABORT that
finishes the request as "stop"), and hands each request its outputs through a collector.
Outputs of streaming requests are deltas: a slow reader gets its pending deltas merged into
one, so nothing is dropped and nothing is recomputed, and the per-step cost does not grow
with how long the outputs already are.

If an engine core dies, every in-flight request and every later call raises EngineDeadError
and ``on_dead`` callbacks run (the server uses one to exit so a supervisor can restart it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, Protocol, TypeVar

from pagedlm.engine.core_client import EngineDeadError, MPClient
from pagedlm.engine.core_launcher import CoreAddresses
from pagedlm.engine.input_processor import InputProcessor, InvalidRequestError, PromptType, fan_out, load_tokenizer
from pagedlm.engine.llm_engine import EngineStats
from pagedlm.engine.messages import EngineCoreOutputs, SchedulerStats
from pagedlm.engine.output_processor import IterationStats, OutputProcessor
from pagedlm.engine.sleep_mode import SLEEPING_MESSAGE, check_sleep_args, utility_errors_typed
from pagedlm.engine_args import EngineArgs
from pagedlm.outputs import CompletionOutput, RequestOutput
from pagedlm.pooling_params import PoolingParams
from pagedlm.sampling_params import RequestOutputKind, SamplingParams

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Outputs handled between yields to the event loop: a step of 1,000 requests must not hold
# the loop for its whole duration.
OUTPUT_CHUNK_SIZE = 256

__all__ = ["AsyncLLM", "EngineDeadError", "RequestFailedError", "RequestStream"]


class RequestFailedError(RuntimeError):
    """The engine finished one request with an error. ``status`` is the HTTP status a server
    should answer with: 400 when the request itself cannot be served (e.g. it needs more KV
    cache blocks than exist), 500 for an unexpected failure."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class StatLogger(Protocol):
    """Receives frontend events (see pagedlm.metrics.PrometheusStatLogger)."""

    def record_iteration(self, stats: IterationStats) -> None: ...
    def record_aborts(self, request_ids: list[str]) -> None: ...
    def record_stats(self, stats: EngineStats) -> None: ...
    def record_engine_stats(self, engine_index: int, stats: SchedulerStats) -> None: ...
    def record_sleep_state(self, sleeping: bool, level: int = 0, num_engines: int = 1) -> None: ...


class RequestStream:
    """The outputs of one request, as an async iterator. A reader that falls behind gets its
    pending DELTA outputs merged into one when it next reads (each delta is kept once and
    joined once: O(new) per step however slow the reader); of CUMULATIVE outputs it gets the
    newest. Ends after the finished output; raises EngineDeadError / RequestFailedError if the
    engine or the request failed."""

    def __init__(self, request_id: str, engine: "AsyncLLM", kind: RequestOutputKind) -> None:
        self.request_id = request_id
        self.finished = False
        self._engine = engine
        self._kind = kind
        self._pending: list[RequestOutput] = []
        self._error: BaseException | None = None
        self._cancelled = False
        self._ready = asyncio.Event()

    def put(self, item: RequestOutput | BaseException | None) -> None:
        """Event loop only. None means 'cancelled': the iteration stops quietly."""
        if item is None:
            self._cancelled = True
        elif isinstance(item, BaseException):
            self._error = self._error or item  # an error, once queued, wins
        elif self._kind == RequestOutputKind.DELTA:
            self._pending.append(item)
        else:
            self._pending = [item]
        self._ready.set()

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        while not self.finished:
            if self._error is not None:
                self.finished = True
                raise self._error
            if self._pending:
                pending, self._pending = self._pending, []
                output = merge_deltas(pending) if len(pending) > 1 else pending[0]
                self.finished = output.finished
                return output
            if self._cancelled:
                break
            self._ready.clear()
            await self._ready.wait()
        self.finished = True
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Abort the request (idempotent) and end the iteration."""
        if not self.finished:
            self._engine.abort(self.request_id)
            self.put(None)


def merge_deltas(outputs: list[RequestOutput]) -> RequestOutput:
    """Consecutive DELTA outputs of one request -> one DELTA output covering them all."""
    last = outputs[-1]
    merged: dict[int, CompletionOutput] = {}
    texts: dict[int, list[str]] = {}
    for output in outputs:
        for c in output.outputs:
            into = merged.get(c.index)
            if into is None:
                merged[c.index] = into = CompletionOutput(c.index, "", [], c.cumulative_logprob,
                                                          [] if c.logprobs is not None else None)
                texts[c.index] = []
            texts[c.index].append(c.text)
            into.token_ids.extend(c.token_ids)
            if c.logprobs is not None:
                into.logprobs = (into.logprobs or [])
                into.logprobs.extend(c.logprobs)
            into.cumulative_logprob, into.finish_reason, into.stop_reason = (
                c.cumulative_logprob, c.finish_reason, c.stop_reason)
    for index, parts in texts.items():
        merged[index].text = "".join(parts)
    prompt_logprobs = next((o.prompt_logprobs for o in outputs if o.prompt_logprobs is not None), None)
    return RequestOutput(last.request_id, last.prompt, last.prompt_token_ids, prompt_logprobs,
                         [merged[i] for i in sorted(merged)], last.finished, last.num_cached_tokens, last.metrics,
                         last.error)


class AsyncLLM:
    def __init__(self, engine_args: EngineArgs, stat_logger: StatLogger | None = None,
                 data_parallel_size: int | None = None, cores: CoreAddresses | None = None,
                 client_index: int = 0) -> None:
        """Starts ``data_parallel_size`` engine cores (None: ``engine_args.data_parallel_size``),
        or joins running ones (``cores``, as API server ``client_index`` of several: see
        entrypoints/openai/api_server_pool.py)."""
        if data_parallel_size is None:
            data_parallel_size = engine_args.data_parallel_size
        if data_parallel_size < 1:
            raise ValueError(f"data_parallel_size must be at least 1, got {data_parallel_size}")
        self.config = engine_args.create_engine_config()  # a bad setting fails here, before any process
        self.model_config = self.config.model_config
        self._asleep = False  # put to sleep through this frontend (sleep mode)
        self._sleep_level = 0  # the level of that sleep (the engine_sleep_state metric)
        # Two tokenizers: HF fast tokenizers must not be used from two threads at once
        # ("Already borrowed"), and input runs on the tokenizer thread, output on the loop.
        self.tokenizer = load_tokenizer(self.model_config)
        self.input_processor = InputProcessor(self.model_config, self.tokenizer, self.config.lora_config,
                                              self.config.scheduler_config.scheduling_policy,
                                              self.config.logits_processors)
        self.output_processor = OutputProcessor(load_tokenizer(self.model_config),
                                                self.config.scheduler_config.stream_interval)
        self.stat_logger = stat_logger
        self.on_dead: list[Callable[[BaseException], None]] = []
        self._streams: dict[str, RequestStream] = {}
        self._tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="pagedlm-tokenize")
        self._output_task: asyncio.Task | None = None
        self._dead: BaseException | None = None
        self._engine_stats: dict[int, SchedulerStats] = {}
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.draining = False  # set by a server that is shutting down: no new requests
        self.client = MPClient(engine_args, num_engines=data_parallel_size, cores=cores, client_index=client_index)

    @classmethod
    def from_engine_args(cls, args: EngineArgs, stat_logger: StatLogger | None = None,
                         data_parallel_size: int | None = None, cores: CoreAddresses | None = None,
                         client_index: int = 0) -> "AsyncLLM":
        if cores is None:  # (joining running cores: the process that started them logged them)
            args.log_notices()
        return cls(args, stat_logger, data_parallel_size, cores, client_index)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "AsyncLLM":
        """Start the output handler on the running event loop (idempotent)."""
        if self._output_task is None:
            self.client.attach_loop(asyncio.get_running_loop())
            self._output_task = asyncio.create_task(self._output_handler(), name="pagedlm-output-handler")
        return self

    def shutdown(self) -> None:
        if self._output_task is not None:
            self._output_task.cancel()
        self.client.shutdown()
        self._tokenizer_thread.shutdown(wait=False, cancel_futures=True)

    @property
    def is_dead(self) -> bool:
        return self._dead is not None

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._streams)

    def get_stats(self) -> EngineStats:
        """The engine cores' latest stats, summed over data-parallel ranks."""
        return _sum_stats(list(self._engine_stats.values()), self.prompt_tokens_total, self.generation_tokens_total)

    # ------------------------------------------------------------------ text work, off the loop

    async def run_in_tokenizer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run tokenizer work (encode, chat templates) on the tokenizer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, fn, *args)

    async def tokenize(self, text: str, add_special_tokens: bool = True, check_chars: bool = True) -> list[int]:
        """``check_chars``: refuse a text whose length alone proves it too long (off when it will be truncated)."""
        return await self.run_in_tokenizer(self.input_processor.encode, text, add_special_tokens, check_chars)

    # ------------------------------------------------------------------ requests

    async def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams,
                          arrival_time: float | None = None, lora_request: Any = None,
                          priority: int = 0) -> RequestStream:
        """Validate (on the tokenizer thread) and queue a request. Raises InvalidRequestError
        (a ValueError) on bad input and EngineDeadError when the engine has failed."""
        self._check_alive()
        if self._asleep:
            raise RequestFailedError(SLEEPING_MESSAGE, status=503)
        self.start()  # vLLM's AsyncLLMEngine starts its output loop on the first request too
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        arrival = arrival_time if arrival_time is not None else time.time()
        if _needs_tokenizer(prompt, params):
            text, request = await self.run_in_tokenizer(self.input_processor.process, request_id, prompt, params,
                                                        arrival, lora_request, priority)
            self._check_alive()
        else:  # token ids in, nothing to tokenize: no thread hop on the way to the first token
            text, request = self.input_processor.process(request_id, prompt, params, arrival, lora_request, priority)
        if request_id in self._streams:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        children = fan_out(request)
        stream = RequestStream(request_id, self, request.sampling_params.output_kind)
        self.output_processor.add_request(request_id, text, children)
        self._streams[request_id] = stream
        try:
            self.client.add_requests(children)
        except BaseException:  # not sent (e.g. a value msgpack cannot carry): forget it, or it never ends
            self._streams.pop(request_id, None)
            self.output_processor.abort_request(request_id)
            raise
        # Every sequence prefills the prompt (vLLM counts n of them for n > 1; later ones may hit
        # the prefix cache, which prefix_cache_hits shows).
        self.prompt_tokens_total += request.num_prompt_tokens * len(children)
        return stream

    async def generate(self, prompt: PromptType, sampling_params: SamplingParams, request_id: str,
                       arrival_time: float | None = None, lora_request: Any = None,
                       priority: int = 0) -> AsyncIterator[RequestOutput]:
        """add_request + iterate; aborts the request if the caller stops early. Keyword names
        as vLLM's (``engine.generate(request_id=..., prompt=..., sampling_params=...)``)."""
        stream = await self.add_request(request_id, prompt, sampling_params, arrival_time, lora_request, priority)
        try:
            async for output in stream:
                yield output
        finally:
            stream.cancel()

    async def encode(self, prompt: PromptType, pooling_params: PoolingParams, request_id: str,
                     lora_request: Any = None, trace_headers: Any = None, priority: int = 0,
                     truncate_prompt_tokens: int | None = None,
                     tokenization_kwargs: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        """A pooling request (a ``--runner pooling`` model), as vLLM's ``AsyncLLM.encode``: yields
        its PoolingRequestOutput. ``truncate_prompt_tokens`` is vLLM's older place for the pooling
        parameter of that name. Tracing and tokenizer keyword arguments are refused."""
        if trace_headers is not None:
            raise ValueError("trace_headers is not supported (pagedlm has no request tracing)")
        if tokenization_kwargs:
            raise ValueError("tokenization_kwargs is not supported; use truncate_prompt_tokens")
        if truncate_prompt_tokens is not None:
            if pooling_params.truncate_prompt_tokens not in (None, truncate_prompt_tokens):
                raise ValueError("truncate_prompt_tokens differs from pooling_params.truncate_prompt_tokens")
            pooling_params = dataclasses.replace(pooling_params, truncate_prompt_tokens=truncate_prompt_tokens)
        stream = await self.add_request(request_id, prompt, pooling_params, lora_request=lora_request,
                                        priority=priority)
        try:
            async for output in stream:
                yield output
        finally:
            stream.cancel()

    def abort(self, request_id: str | list[str], error: BaseException | None = None) -> None:
        """Abort requests (idempotent); their KV blocks go back to the pool. With ``error``,
        their streams end with it instead of quietly."""
        ids = [request_id] if isinstance(request_id, str) else list(request_id)
        aborted = []
        for rid in ids:
            stream = self._streams.pop(rid, None)
            if stream is None:
                continue
            aborted.append(rid)
            self.client.abort_requests(self.output_processor.abort_request(rid))
            stream.put(error)
        if aborted:
            self._log("record_aborts", aborted)

    def abort_all(self, error: BaseException) -> list[str]:
        ids = list(self._streams)
        self.abort(ids, error)
        return ids

    # ------------------------------------------------------------------ sleep mode

    async def _call(self, method: str, *args: Any) -> list[Any]:
        self._check_alive()
        with utility_errors_typed():
            return await asyncio.wrap_future(self.client.call_utility_future(method, *args))

    async def sleep(self, level: int = 1) -> None:
        """vLLM's sleep mode (LLMEngine.sleep): raises SleepModeError when it is off or
        requests are unfinished; requests are refused (503) until wake_up."""
        check_sleep_args(self.config.cache_config.enable_sleep_mode, level)
        await self._call("sleep", level)
        self._asleep = True
        self._sleep_level = level
        self._log("record_sleep_state", True, level, self.client.num_engines)

    async def wake_up(self, tags: list[str] | None = None) -> None:
        check_sleep_args(self.config.cache_config.enable_sleep_mode, tags=tags)
        await self._call("wake_up", list(tags) if tags is not None else None)
        self._asleep = await self.is_sleeping()
        # (vLLM's gauge: still asleep after waking only some of what sleep freed)
        self._log("record_sleep_state", self._asleep, self._sleep_level, self.client.num_engines)

    async def is_sleeping(self) -> bool:
        return any(await self._call("is_sleeping"))

    async def reset_prefix_cache(self) -> bool:
        self._check_alive()
        return all(await asyncio.wrap_future(self.client.call_utility_future("reset_prefix_cache")))

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine has failed and cannot serve requests: {self._dead}")
        if self.draining:
            raise RequestFailedError("The server is shutting down and accepts no new requests.", status=503)

    # ------------------------------------------------------------------ outputs

    async def _output_handler(self) -> None:
        try:
            while True:
                outputs = await self.client.get_output_async()
                await self._handle(outputs)
        except EngineDeadError as e:
            self._die(e)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - a frontend bug must not leave clients hanging
            logger.exception("The output handler failed; the engine is dead")
            self._die(EngineDeadError(f"the output handler failed: {type(e).__name__}: {e}"))

    async def _handle(self, batch: EngineCoreOutputs) -> None:
        outputs = batch.outputs
        for start in range(0, len(outputs), OUTPUT_CHUNK_SIZE):
            if start:
                await asyncio.sleep(0)  # let the loop serve sockets between chunks
            processed = self.output_processor.process_outputs(outputs[start:start + OUTPUT_CHUNK_SIZE])
            processed.iteration_stats.engine_index = batch.engine_index
            for output in processed.request_outputs:
                self._deliver(output)
            if processed.stopped_child_ids:
                self.client.abort_requests(processed.stopped_child_ids, stopped=True)
            self.generation_tokens_total += processed.iteration_stats.num_generation_tokens
            self._log("record_iteration", processed.iteration_stats)
        if batch.scheduler_stats is not None:
            self._engine_stats[batch.engine_index] = batch.scheduler_stats
            self._log("record_engine_stats", batch.engine_index, batch.scheduler_stats)
            self._log("record_stats", self.get_stats())

    def _deliver(self, output: RequestOutput) -> None:
        stream = self._streams.get(output.request_id)
        if stream is None:
            return
        if output.finished:
            del self._streams[output.request_id]
        stream.put(RequestFailedError(output.error, status=400) if output.error is not None else output)

    def _log(self, method: str, *args: Any) -> None:
        # Metrics must never take serving down: a failing logger is reported, not raised.
        if self.stat_logger is None:
            return
        try:
            getattr(self.stat_logger, method)(*args)
        except Exception:  # noqa: BLE001
            logger.exception("stat logger %s failed", method)

    def _die(self, error: EngineDeadError) -> None:
        if self._dead is not None:
            return
        self._dead = error
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream.put(error)
        for callback in self.on_dead:
            try:
                callback(error)
            except Exception:  # noqa: BLE001
                logger.exception("on_dead callback failed")


def _needs_tokenizer(prompt: PromptType, params: SamplingParams) -> bool:
    """Whether processing this request touches the (input) tokenizer."""
    if isinstance(params, SamplingParams) and params.bad_words:
        return True
    if isinstance(prompt, dict):
        return "prompt_token_ids" not in prompt and "prompt_embeds" not in prompt
    return not isinstance(prompt, list)


def _sum_stats(per_engine: list[SchedulerStats], prompt_tokens: int, generation_tokens: int) -> EngineStats:
    total = EngineStats(prompt_tokens_total=prompt_tokens, generation_tokens_total=generation_tokens)
    for s in per_engine:
        for name, value in vars(s).items():
            if name in ("kv_cache_usage", "spec_decoding"):  # spec counters are per engine
                continue
            if isinstance(value, dict):  # requests per LoRA adapter
                merged = getattr(total, name)
                for key, count in value.items():
                    merged[key] = merged.get(key, 0) + count
            elif name == "max_lora":  # the same setting on every engine
                total.max_lora = max(total.max_lora, value)
            else:
                setattr(total, name, getattr(total, name) + value)
    if per_engine:
        total.kv_cache_usage = sum(s.kv_cache_usage for s in per_engine) / len(per_engine)
    return total
