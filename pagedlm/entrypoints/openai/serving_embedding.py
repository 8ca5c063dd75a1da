"""POST /v1/embeddings: inputs -> pooling requests -> the OpenAI embedding list.

``input`` is a string, a list of strings, a list of token ids or a list of lists of token
ids (one embedding per item); ``encoding_format`` "float", "base64" (little-endian float32,
what the ``openai`` client decodes, and what it asks for by default), or vLLM's "bytes" (the
raw arrays end to end as application/octet-stream, described by a JSON ``metadata`` header)
and "bytes_only" (the same body, no header); ``dimensions`` only for Matryoshka models. vLLM
extras: ``truncate_prompt_tokens`` (``truncation_side``), ``normalize`` (``use_activation``, its
newer name), ``add_special_tokens``, ``priority``, ``request_id``, ``cache_salt``, and for base64
and bytes ``embed_dtype`` (float32, float16, bfloat16, fp8_e4m3, fp8_e5m2) and ``endianness``
(native, little, big); vLLM's fields it lacks are refused (PoolingFields).
Chat-style input (vLLM's): ``messages`` instead of ``input``, rendered by the model's chat
template (``add_generation_prompt`` off and ``add_special_tokens`` off by default) into one
prompt. ``POST /pooling`` takes the same body plus ``task`` ("token_embed", the default: one
vector per prompt token, or "embed") and answers vLLM's ``pool-`` list of ``data``.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from fastapi import Request
from fastapi.responses import Response
from pydantic import Field, field_validator

from pagedlm.entrypoints.openai.chat_utils import message_text, render_chat
from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.entrypoints.openai.protocol import ChatMessage, OpenAIBaseModel, first_unsupported
from pagedlm.entrypoints.openai.serving_common import OpenAIServing, RequestGroup, engine_request_id, to_openai_error
from pagedlm.pooling_params import PoolingParams

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on items per request
EncodingFormat = Literal["float", "base64", "bytes", "bytes_only"]  # vLLM's


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class PoolingFields(OpenAIBaseModel):
    """vLLM's fields of every pooling request (/v1/embeddings, /pooling, /classify, /score,
    /rerank); those pagedlm does not implement are declared and refused when set
    (unsupported_feature), never dropped as unknown fields."""

    model: str | None = None
    user: str | None = None  # an end-user id for the caller's records: OpenAI and vLLM leave it alone
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    truncation_side: Literal["left", "right"] | None = None  # "right": keep the first k tokens instead (vLLM's)
    priority: int = Field(0, ge=-(2**63), le=2**63 - 1)  # --scheduling-policy priority: lower first
    request_id: str | None = Field(None, min_length=1, max_length=256)  # the response id's suffix
    cache_salt: str | None = Field(None, min_length=1, max_length=1024)  # reaches the engine with each prompt
    padding: Literal["max_length", "do_not_pad"] | None = None  # refused: "max_length"
    mm_processor_kwargs: Any = None  # refused: text models only

    # vLLM field -> (values that change nothing, why another value is refused); a field of some
    # requests only is looked up where it is declared.
    UNSUPPORTED: ClassVar[dict[str, tuple[tuple[Any, ...], str]]] = {
        "padding": ((None, "do_not_pad"), "prompts are never padded to max_length"),
        "mm_processor_kwargs": ((None,), "text models only"),
        "media_io_kwargs": ((None, {}), "text models only"),
    }

    def unsupported_feature(self) -> tuple[str, str] | None:
        """(param, message) for a vLLM field that is set but that pagedlm does not implement."""
        return first_unsupported(self, self.UNSUPPORTED)


class EmbeddingRequest(PoolingFields):
    input: Any = None  # this, or messages
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    normalize: bool | None = None
    use_activation: bool | None = None  # vLLM's newer name of normalize
    add_special_tokens: bool | None = None  # None: True for input, False for messages (the template adds them)
    embed_dtype: Literal["float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"] = "float32"  # not for float
    endianness: Literal["native", "little", "big"] = "native"  # not for float
    # vLLM's chat-style embedding request: messages through the chat template, instead of input.
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool = False
    continue_final_message: bool = False
    chat_template: str | None = None  # refused, as on /v1/chat/completions
    chat_template_kwargs: dict[str, Any] | None = None
    media_io_kwargs: Any = None  # refused: text models only

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Any) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise ValueError("must be a non-empty string or list (strings, token ids, or lists of token ids)")
        if len(value) > MAX_EMBEDDING_INPUTS:
            raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} inputs per request, got {len(value)}")
        if all(isinstance(v, str) for v in value) or all(_is_token_id(t) for t in value):
            return value
        if all(isinstance(v, list) and all(_is_token_id(t) for t in v) for v in value):
            return value
        raise ValueError("must be a string, a list of strings, a list of token ids or a list of lists of token ids")

    def inputs(self) -> list[str | list[int]]:
        v = self.input
        if v is None:  # the caller checked: messages are given instead
            return []
        if isinstance(v, str) or all(_is_token_id(t) for t in v):
            return [v]
        return list(v)


class PoolingRequest(EmbeddingRequest):
    """vLLM's /pooling body: an embedding request plus the pooling task ("encode": vLLM's older
    name of token_embed)."""

    task: Literal["token_embed", "embed", "encode"] | None = None


class OpenAIServingEmbedding(OpenAIServing):
    async def create_embedding(self, request: EmbeddingRequest, raw: Request) -> Response:
        return await self._pool(request, raw, "embed", "embd", "embedding")

    async def create_pooling(self, request: PoolingRequest, raw: Request) -> Response:
        task = {None: "token_embed", "encode": "token_embed"}.get(request.task, request.task)
        return await self._pool(request, raw, task, "pool", "pooling")

    async def _pool(self, request: EmbeddingRequest, raw: Request, task: str, id_prefix: str,
                    kind: str) -> Response:
        """kind: "embedding" (the OpenAI shape) or "pooling" (vLLM's /pooling shape)."""
        if request.model and request.model not in self.served_model_names:
            raise OpenAIError(f"The model `{request.model}` does not exist.", 404, "model")
        self._check_fields(request)
        pooler_config = self.engine.model_config.pooler_config
        if pooler_config is None:
            api = "Embeddings" if kind == "embedding" else "Pooling"
            raise OpenAIError(f"This model generates text and does not support the {api} API; start "
                              "it with --runner pooling to embed.", 400, "model")
        normalize = request.normalize if request.use_activation is None else request.use_activation
        try:
            params = PoolingParams(request.truncate_prompt_tokens, request.dimensions, normalize, task=task)
            pooler_config.check_dimensions(request.dimensions)
        except ValueError as e:
            raise OpenAIError(str(e), 400, str(e).split(" ", 1)[0].strip(":")) from e
        prompts = self.cut(await self._prompts(request), request)
        request_id = self.response_id(id_prefix, request, raw)
        group = await self.start(engine_request_id(request_id, bool(request.request_id)), prompts, params, False,
                                 priority=request.priority, cache_salt=request.cache_salt)
        model = self.model_name(request)
        return await self.respond(raw, group, False, _no_stream,
                                  lambda g: self._full(g, request_id, model, request, kind))

    def cut(self, prompts: list[tuple[str | None, list[int]]],
            request: PoolingFields) -> list[tuple[str | None, list[int]]]:
        """truncate_prompt_tokens from the side truncation_side names, here (the engine would
        keep the last tokens; what is cut here it leaves as it is)."""
        return [(text, self.truncate(token_ids, request)) for text, token_ids in prompts]

    @staticmethod
    def check_pooling_fields(request: PoolingFields) -> None:
        unsupported = request.unsupported_feature()
        if unsupported is not None:
            raise OpenAIError(unsupported[1], 400, unsupported[0])

    def _check_fields(self, request: EmbeddingRequest) -> None:
        self.check_pooling_fields(request)
        if None not in (request.normalize, request.use_activation) and request.normalize != request.use_activation:
            raise OpenAIError("normalize and use_activation (vLLM's newer name of normalize) disagree; set only "
                              "use_activation.", 400, "use_activation")
        if (request.input is None) == (request.messages is None):
            raise OpenAIError("Give either input or messages (chat-style), not both and not neither.", 400,
                              "input" if request.input is None else "messages")
        if request.messages is None:
            for name in ("add_generation_prompt", "continue_final_message", "chat_template_kwargs"):
                if getattr(request, name):
                    raise OpenAIError(f"{name} applies to chat-style input (messages) only.", 400, name)
        if request.chat_template is not None:
            raise OpenAIError("chat_template in the request is not allowed; start the server with "
                              "--chat-template instead.", 400, "chat_template")
        if request.encoding_format == "float" and (request.embed_dtype, request.endianness) != ("float32", "native"):
            raise OpenAIError("embed_dtype and endianness apply to encoding_format 'base64', 'bytes' and "
                              "'bytes_only' only.", 400,
                              "embed_dtype" if request.embed_dtype != "float32" else "endianness")

    async def _prompts(self, request: EmbeddingRequest) -> list[tuple[str | None, list[int]]]:
        check_chars = request.truncate_prompt_tokens is None  # a truncated input may be long
        if request.messages is None:
            add_special_tokens = True if request.add_special_tokens is None else request.add_special_tokens
            return [await self._tokenize(item, add_special_tokens, check_chars) for item in request.inputs()]
        try:
            if check_chars:  # text too long to be worth rendering is refused first
                self.engine.input_processor.check_num_chars(
                    sum(len(message_text(m, i) or "") for i, m in enumerate(request.messages)))
        except ValueError as e:
            raise to_openai_error(e) from e
        text, token_ids = await self.engine.run_in_tokenizer(
            render_chat, self.tokenizer, request.messages, request.add_generation_prompt,
            request.continue_final_message, None, request.chat_template_kwargs, bool(request.add_special_tokens),
            self.options.chat_template_content_format)
        if not token_ids:
            raise OpenAIError("The chat template rendered an empty prompt.", 400, "messages")
        return [(text, token_ids)]

    async def _tokenize(self, item: str | list[int], add_special_tokens: bool,
                        check_chars: bool) -> tuple[str | None, list[int]]:
        if isinstance(item, str):
            try:
                token_ids = await self.engine.run_in_tokenizer(self.engine.input_processor.encode, item,
                                                               add_special_tokens, check_chars)
            except ValueError as e:  # too long to be worth tokenizing
                raise to_openai_error(e) from e
            text: str | None = item
        else:
            text, token_ids = None, list(item)
        if not token_ids:
            raise OpenAIError("The input cannot be empty.", 400, "input")
        return text, token_ids

    async def _full(self, group: RequestGroup, request_id: str, model: str,
                    request: EmbeddingRequest, kind: str = "embedding") -> dict[str, Any] | Response:
        vectors: list[np.ndarray] = [np.empty(0)] * len(group.streams)
        num_prompt_tokens = 0
        async for index, output in group.merged():
            if output.finished:
                vectors[index] = output.outputs.data.numpy()
                num_prompt_tokens += len(output.prompt_token_ids)
        if request.encoding_format in ("bytes", "bytes_only"):
            head = {"id": request_id, "created": group.created, "model": model}
            return _bytes_response(vectors, request, head, num_prompt_tokens)
        # kind "pooling": the vector, or per-token vectors, under "data" (vLLM's /pooling)
        name = "embedding" if kind == "embedding" else "data"
        data = [{"index": index, "object": kind, name: _encode(vector, request)}
                for index, vector in enumerate(vectors)]
        return {
            "id": request_id, "object": "list", "created": group.created, "model": model, "data": data,
            "usage": {"prompt_tokens": num_prompt_tokens, "total_tokens": num_prompt_tokens, "completion_tokens": 0},
        }


_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def _encode(vector: np.ndarray, request: EmbeddingRequest) -> list[float] | str:
    """One item of a JSON answer: the floats, or base64 of _raw_bytes."""
    if request.encoding_format != "base64":
        return vector.tolist()
    return base64.b64encode(_raw_bytes(vector, request)).decode("ascii")


def _raw_bytes(vector: np.ndarray, request: EmbeddingRequest) -> bytes:
    """The vector's values (flattened, row-major) in embed_dtype, each in the given byte order:
    what base64 wraps and what the bytes formats put end to end."""
    values = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32)).to(_TORCH_DTYPES[request.embed_dtype])
    width = values.element_size()
    raw = values.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[width]).numpy()
    order = sys.byteorder if request.endianness == "native" else request.endianness
    raw = raw.astype(raw.dtype.newbyteorder("<" if order == "little" else ">"))
    return raw.tobytes()


def _bytes_response(vectors: list[np.ndarray], request: EmbeddingRequest, head: dict[str, Any],
                    num_prompt_tokens: int) -> Response:
    """vLLM's "bytes": the items' raw values end to end in input order, as
    application/octet-stream, and a JSON ``metadata`` header: id, created, model, per item its
    index, embed_dtype, endianness, byte range [start, end) in the body and shape, and the usage
    (prompt and total tokens, as vLLM's header has it). "bytes_only": the same body, no header."""
    chunks = [_raw_bytes(vector, request) for vector in vectors]
    headers = None
    if request.encoding_format == "bytes":
        items, offset = [], 0
        for index, (vector, chunk) in enumerate(zip(vectors, chunks)):
            items.append({"index": index, "embed_dtype": request.embed_dtype, "endianness": request.endianness,
                          "start": offset, "end": offset + len(chunk), "shape": list(vector.shape)})
            offset += len(chunk)
        usage = {"prompt_tokens": num_prompt_tokens, "total_tokens": num_prompt_tokens}
        headers = {"metadata": json.dumps({**head, "data": items, "usage": usage})}  # ASCII: a valid header value
    return Response(b"".join(chunks), media_type="application/octet-stream", headers=headers)


def _no_stream(_: RequestGroup) -> Any:
    """respond() asks for chunks only when streaming, and embeddings never stream."""
    raise OpenAIError("Embeddings are not streamed.", 400, "stream")
