"""What /v1/completions and /v1/chat/completions share: model check, length check, sampling
params, starting engine requests, merging their outputs, disconnects, SSE framing, usage."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import msgspec
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from pagedlm.engine.async_llm import AsyncLLM, EngineDeadError, RequestFailedError, RequestStream
from pagedlm.engine.input_processor import InvalidRequestError
from pagedlm.entrypoints.openai.errors import OpenAIError, sse_error
from pagedlm.entrypoints.openai.protocol import SamplingFields
from pagedlm.entrypoints.openai.serving_beam import BeamSearchStream, beam_search_params
from pagedlm.entrypoints.openai.serving_lora import resolve_lora
from pagedlm.lora.registry import LoRAModules
from pagedlm.lora.request import LoRARequest
from pagedlm.entrypoints.openai.tool_calling import ServingOptions
from pagedlm.outputs import Logprob, RequestOutput
from pagedlm.sampling_params import RequestOutputKind, SamplingParams

SSE_DONE = "data: [DONE]\n\n"
# JSON has no -inf; vLLM clamps logprobs the same way.
MIN_LOGPROB = -9999.0


def clamp_logprob(value: float) -> float:
    return max(value, MIN_LOGPROB) if not math.isnan(value) else MIN_LOGPROB


_JSON = msgspec.json.Encoder()  # compact UTF-8 JSON, ~10x json.dumps on a stream chunk


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event (a stream chunk per token and request: it is on the hot path)."""
    return "data: " + _JSON.encode(obj).decode() + "\n\n"


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def engine_request_id(response_id: str, caller_named: bool) -> str:
    """The engine's id for a response's requests: the response id, with a random tail when the
    caller named it (``request_id``): callers may repeat their ids, the engine's must not."""
    return f"{response_id}-{uuid.uuid4().hex[:8]}" if caller_named else response_id


def to_openai_error(e: BaseException) -> OpenAIError:
    """Engine-side exceptions -> the status a client should see."""
    if isinstance(e, OpenAIError):
        return e
    if isinstance(e, EngineDeadError):
        return OpenAIError(str(e), 500)
    if isinstance(e, RequestFailedError):
        return OpenAIError(str(e), e.status)

    if isinstance(e, ValueError):  # InvalidRequestError, SamplingParams validation
        return OpenAIError(str(e), 400, _guess_param(str(e)))
    return OpenAIError(f"Internal server error: {type(e).__name__}: {e}", 500)


def _guess_param(message: str) -> str | None:
    """SamplingParams messages start with the field name; prompt errors mention the prompt."""
    first = message.split(" ", 1)[0].strip(".,:")
    if first in SamplingParams.__dataclass_fields__:
        return first
    return "prompt" if "prompt" in message.lower() or "token id" in message.lower() else None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add_output(self, output: RequestOutput, num_prompt_tokens: int | None = None) -> None:
        """A final (FINAL_ONLY) output: its prompt and all its tokens."""
        self.add_prompt(output, num_prompt_tokens)
        self.add_completion(output)

    def add_prompt(self, output: RequestOutput, num_prompt_tokens: int | None = None) -> None:
        """``num_prompt_tokens``: the prompt's length where its output has no token ids (a
        prompt given as embeddings)."""
        self.prompt_tokens += (num_prompt_tokens if output.prompt_token_ids is None and num_prompt_tokens is not None
                               else len(output.prompt_token_ids or ()))
        self.cached_tokens += output.num_cached_tokens

    def add_completion(self, output: RequestOutput) -> None:
        """The tokens an output carries (a DELTA output: the new ones)."""
        self.completion_tokens += sum(len(c.token_ids) for c in output.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


def require_tokenizer(tokenizer: Any, what: str, param: str | None = None) -> None:
    """400 for what needs text when the server runs without a tokenizer (--skip-tokenizer-init)."""
    if tokenizer is None:
        raise OpenAIError(f"{what} needs a tokenizer, and this server runs without one (--skip-tokenizer-init): "
                          "send token-id prompts to /v1/completions and read the output's ids with "
                          "return_token_ids", 400, param)


def stream_usage_flags(request: SamplingFields, force_include_usage: bool = False) -> tuple[bool, bool]:
    """(include_usage, continuous_usage_stats) as vLLM reads them: usage on every chunk only
    when both are set; --enable-force-include-usage sets the first for every stream."""
    options = request.stream_options
    include = force_include_usage or bool(options and options.include_usage)
    return include, include and bool(options and options.continuous_usage_stats)


def logprob_token(token_id: int, lp: Logprob | None, as_token_id: bool, fallback: str = "") -> str:
    """How a logprobs entry names its token: the decoded text, or with
    --return-tokens-as-token-ids "token_id:N" (for tokens that do not decode on their own)."""
    if as_token_id:
        return f"token_id:{token_id}"
    return lp.decoded_token if lp is not None and lp.decoded_token is not None else fallback


def partial_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """Usage so far of one engine request (continuous_usage_stats)."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class ChoiceProgress:
    """What a stream has sent of one choice."""

    num_chars: int = 0
    finished: bool = False
    started: bool = False
    # Tokens whose chunk was not sent (the parsers held their text back): their logprobs go
    # with the next chunk that is sent, so the streamed logprobs still cover every token.
    held_token_ids: list[int] = field(default_factory=list)
    held_logprobs: list = field(default_factory=list)


@dataclass
class RequestGroup:
    """The engine requests (one per prompt) behind one HTTP request."""

    streams: list[RequestStream]
    prompts: list[tuple[str | None, list[int]]]  # (text, token ids) per stream
    created: int = field(default_factory=lambda: int(time.time()))

    def cancel(self) -> None:
        for stream in self.streams:
            stream.cancel()

    async def merged(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, newest output) as they come, over all streams."""
        if len(self.streams) == 1:
            async for output in self.streams[0]:
                yield 0, output
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, stream: RequestStream) -> None:
            try:
                async for output in stream:
                    queue.put_nowait((index, output))
            except BaseException as e:  # noqa: BLE001 - handed to the reader below
                queue.put_nowait((index, e))
            finally:
                queue.put_nowait((index, None))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        try:
            remaining = len(tasks)
            while remaining:
                index, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield index, item
        finally:
            for task in tasks:
                task.cancel()


async def wait_for_disconnect(request: Request) -> None:
    """Returns when the client goes away. The body has been read, so the next ASGI message
    is the disconnect (uvicorn with ASGI 2.4 sends nothing else)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class OpenAIServing:
    """Base of the completion and chat handlers."""

    options = ServingOptions()  # set by build_app from the server's flags

    def __init__(self, engine: AsyncLLM, served_model_names: list[str]) -> None:
        self.engine = engine
        self.served_model_names = served_model_names
        self.max_model_len = engine.model_config.max_model_len
        # Input tokenizer: only ever used on the engine's tokenizer thread (engine.run_in_tokenizer).
        self.tokenizer = engine.tokenizer
        # Decoding on the event loop uses the output side's own tokenizer instance.
        self.loop_tokenizer = engine.output_processor.tokenizer
        self.eos_token_id = engine.input_processor.eos_token_id
        self.lora_modules: LoRAModules | None = None  # the served LoRA adapters (build_app sets it)

    def lora_for(self, model: str | None) -> LoRARequest | None:
        """The adapter a request's ``model`` names (None: the base model); 404 for an unknown name."""
        if not model or model in self.served_model_names:
            return None
        lora = resolve_lora(self.lora_modules, model)
        if lora is None:
            raise OpenAIError(f"The model `{model}` does not exist.", 404, "model")
        return lora

    def require_tokenizer(self, what: str, param: str | None = None) -> None:
        require_tokenizer(self.tokenizer, what, param)

    def check_request(self, request: SamplingFields) -> None:
        self.lora_for(request.model)
        if self.engine.model_config.runner == "pooling":
            raise OpenAIError("This model is a pooling (embedding) model and does not support the Completions or "
                              "Chat Completions API; use /v1/embeddings.", 400, "model")
        unsupported = request.unsupported_feature()
        if unsupported is not None:
            raise OpenAIError(unsupported[1], 400, unsupported[0])

    @staticmethod
    def response_id(prefix: str, request: Any, raw: Request | None = None) -> str:
        """The response's id, as vLLM's: ``prefix-<id>`` with the X-Request-Id header's id, else the
        request's ``request_id``, else random. A header id becomes the request's own, so the
        engine's ids stay unique when a caller repeats it."""
        header = raw.headers.get("x-request-id") if raw is not None else None
        if header:
            if len(header) > 256:
                raise OpenAIError("X-Request-Id must be at most 256 characters.", 400, "X-Request-Id")
            request.request_id = header
        return f"{prefix}-{request.request_id}" if request.request_id else random_id(prefix)

    def as_token_ids(self, request: SamplingFields) -> bool:
        """Logprob entries name tokens "token_id:N": the request's choice, else the server flag's;
        always without a tokenizer (there is no text to name them by)."""
        if self.loop_tokenizer is None:
            return True
        if request.return_tokens_as_token_ids is not None:
            return request.return_tokens_as_token_ids
        return self.options.return_tokens_as_token_ids

    def truncate(self, token_ids: list[int], request: SamplingFields) -> list[int]:
        """truncate_prompt_tokens, before the length check (as vLLM: a long prompt is cut, not
        refused), from the side truncation_side names (default "left": the last tokens stay)."""
        try:
            return self.engine.input_processor.truncate(token_ids, request.truncate_prompt_tokens,
                                                        request.truncation_side or "left")
        except InvalidRequestError as e:
            raise to_openai_error(e) from e

    def check_logprobs(self, name: str, value: int | None) -> None:
        """Before any work: the engine's own check (-1: the whole vocabulary, under --max-logprobs)."""
        try:
            self.engine.input_processor.num_logprobs(name, value)
        except InvalidRequestError as e:
            raise OpenAIError(str(e), 400, name) from e

    def model_name(self, request: Any) -> str:
        """The response's ``model``, as vLLM's: the adapter's name for a LoRA request, else the
        first served name, whichever of the served names the request used."""
        if request.model and request.model not in self.served_model_names:
            return request.model  # a LoRA adapter (lora_for has checked the name)
        return self.served_model_names[0]

    def check_length(self, num_prompt_tokens: int, max_tokens: int | None, what: str = "prompt") -> None:
        """vLLM's messages: the prompt must leave room, and prompt + max_tokens must fit."""
        if num_prompt_tokens >= self.max_model_len:
            raise OpenAIError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your request has "
                f"{num_prompt_tokens} input tokens. Please reduce the length of the {what}.", 400, what)
        if max_tokens is not None and num_prompt_tokens + max_tokens > self.max_model_len:
            raise OpenAIError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the {what}, {max_tokens} in "
                f"the completion). Please reduce the length of the {what} or completion.", 400, "max_tokens")

    def make_params(self, request: SamplingFields, logprobs: int | None, max_tokens: int | None) -> SamplingParams:
        if max_tokens is not None and max_tokens < 1:
            raise OpenAIError(f"max_tokens must be at least 1, got {max_tokens}.", 400, "max_tokens")
        if request.prompt_logprobs is not None and request.prompt_logprobs >= -1:  # (below: SamplingParams says)
            self.check_logprobs("prompt_logprobs", request.prompt_logprobs)
        try:
            return request.sampling_params(logprobs, max_tokens, self.engine.model_config.generation_defaults)
        except (ValueError, TypeError) as e:
            raise OpenAIError(str(e), 400, _guess_param(str(e))) from e

    async def start(self, request_id: str, prompts: list[tuple[str | None, list[int]]],
                    params: SamplingParams, stream: bool, request: SamplingFields | None = None,
                    model: str | None = None, priority: int = 0,
                    token_type_ids: list[list[int] | None] | None = None,
                    prompt_embeds: list[Any] | None = None, cache_salt: str | None = None) -> RequestGroup:
        """Add one engine request per prompt; on any failure abort those already added.
        Streams get DELTA outputs, full responses one FINAL_ONLY output per prompt. The
        request's ``model`` (or ``model``) may name a LoRA adapter. ``token_type_ids``: per
        prompt, a text pair's token types (cross-encoder scoring), or None. ``priority`` and
        ``cache_salt``: those of a request that is not given (a pooling request)."""
        lora = self.lora_for(request.model if request is not None else model)
        if request is not None and request.use_beam_search:
            try:  # a beam search makes its engine requests later: refuse a bad priority now
                self.engine.input_processor.check_priority(request.priority)
            except InvalidRequestError as e:
                raise to_openai_error(e) from e
        request_id = engine_request_id(request_id, request is not None and bool(request.request_id))
        if request is not None and request.use_beam_search:
            if params.structured_outputs is not None:  # the search's steps would not follow the grammar
                raise OpenAIError("use_beam_search cannot be combined with structured output (response_format, "
                                  "structured_outputs, guided_*, or a tool_choice that forces a call).", 400,
                                  "use_beam_search")
            # Its one-token step requests (BeamSearch.step_params) carry neither: refused, not dropped.
            detection = params.repetition_detection
            for name, on in (("repetition_detection", detection is not None and detection.max_pattern_size > 0),
                             ("vllm_xargs", bool(params.extra_args))):
                if on:
                    raise OpenAIError(f"use_beam_search cannot be combined with {name}.", 400, name)
            return self.start_beam_search(request_id, prompts, request, params, lora)
        params.output_kind = RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY
        cache_salt = request.cache_salt if request is not None else cache_salt
        salt = {"cache_salt": cache_salt} if cache_salt else {}
        streams: list[RequestStream] = []
        try:
            for i, (text, token_ids) in enumerate(prompts):
                engine_prompt = {"prompt_token_ids": token_ids, "prompt": text, **salt}
                if prompt_embeds is not None and i < len(prompt_embeds):  # (they come first)
                    engine_prompt = {"prompt_embeds": prompt_embeds[i], **salt}
                if token_type_ids is not None and token_type_ids[i] is not None:
                    engine_prompt["token_type_ids"] = token_type_ids[i]
                sub_id = request_id if len(prompts) == 1 else f"{request_id}-{i}"
                streams.append(await self.engine.add_request(sub_id, engine_prompt, params, lora_request=lora,
                                                             priority=request.priority if request is not None
                                                             else priority))
        except BaseException as e:
            for stream in streams:
                stream.cancel()
            if isinstance(e, (InvalidRequestError, EngineDeadError, RequestFailedError, ValueError)):
                raise to_openai_error(e) from e
            raise
        return RequestGroup(streams, prompts)

    def start_beam_search(self, request_id: str, prompts: list[tuple[str | None, list[int]]],
                          request: SamplingFields, text_params: SamplingParams,
                          lora: LoRARequest | None = None) -> RequestGroup:
        """``text_params``: the request's own parameters; the finished beams' text is decoded
        with its special-token settings. ``lora``: the adapter the request's model names; every
        step request of every beam runs under it (vLLM's beam search does the same)."""
        streams: list[Any] = []
        for i, prompt in enumerate(prompts):
            max_tokens = text_params.max_tokens
            limit = max_tokens if max_tokens is not None else self.max_model_len - len(prompt[1])
            params = beam_search_params(request, limit, self.engine.model_config.max_logprobs,
                                        self.engine.model_config.logprobs_mode)
            sub_id = request_id if len(prompts) == 1 else f"{request_id}-{i}"
            streams.append(BeamSearchStream(self.engine, sub_id, prompt, params, self.eos_token_id, request.priority,
                                            text_params, request.cache_salt, lora))
        return RequestGroup(streams, prompts)

    async def respond(self, raw: Request, group: RequestGroup, stream: bool,
                      make_chunks: Callable[[RequestGroup], AsyncIterator[str]],
                      make_full: Callable[[RequestGroup], Awaitable[dict[str, Any] | Response]]) -> Response:
        """Stream or collect; either way a client disconnect aborts the engine requests. make_full
        gives a JSON body, or a whole Response (the embeddings' raw bytes)."""
        watcher = asyncio.create_task(wait_for_disconnect(raw))
        watcher.add_done_callback(lambda t: _on_disconnect(t, group))
        if stream:
            return StreamingResponse(_stream_body(make_chunks(group), group, watcher),
                                     media_type="text/event-stream")
        collect = asyncio.create_task(make_full(group))
        try:
            await asyncio.wait({collect, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # the handler itself was cancelled (shutdown)
            group.cancel()
            collect.cancel()
            raise
        finally:
            watcher.cancel()
        if not collect.done():  # the client is gone: nobody reads the answer
            group.cancel()
            collect.cancel()
            return Response(status_code=499)
        try:
            body = collect.result()
            return body if isinstance(body, Response) else JSONResponse(body)
        except BaseException as e:
            group.cancel()
            raise to_openai_error(e) from e


def _on_disconnect(task: asyncio.Task, group: RequestGroup) -> None:
    if task.cancelled():  # the response finished first
        return
    task.exception()  # retrieve it: a failing receive() also means the client is unreachable
    group.cancel()


async def _stream_body(chunks: AsyncIterator[str], group: RequestGroup, watcher: asyncio.Task) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield chunk
    except Exception as e:  # noqa: BLE001 - an error after the 200 went out travels in the stream
        yield sse_error(to_openai_error(e))
    finally:
        watcher.cancel()
        group.cancel()
    yield SSE_DONE
