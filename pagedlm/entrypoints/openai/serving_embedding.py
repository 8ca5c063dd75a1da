"""POST /v1/embeddings: inputs -> pooling requests -> the OpenAI embedding list.

``input`` is a string, a list of strings, a list of token ids or a list of lists of token
ids (one embedding per item); ``encoding_format`` "float" or "base64" (little-endian float32,
what the ``openai`` client decodes, and what it asks for by default); ``dimensions`` only
for Matryoshka models. vLLM extras: ``truncate_prompt_tokens``, ``normalize``,
``add_special_tokens``.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from fastapi import Request
from fastapi.responses import Response
from pydantic import Field, field_validator

from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.entrypoints.openai.protocol import OpenAIBaseModel
from pagedlm.entrypoints.openai.serving_common import OpenAIServing, RequestGroup, random_id, to_openai_error
from pagedlm.pooling_params import PoolingParams

MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on items per request


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class EmbeddingRequest(OpenAIBaseModel):
    input: Any
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    truncate_prompt_tokens: int | None = Field(None, ge=-1)
    normalize: bool | None = None
    add_special_tokens: bool = True

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
        if isinstance(v, str) or all(_is_token_id(t) for t in v):
            return [v]
        return list(v)


class OpenAIServingEmbedding(OpenAIServing):
    async def create_embedding(self, request: EmbeddingRequest, raw: Request) -> Response:
        if request.model and request.model not in self.served_model_names:
            raise OpenAIError(f"The model `{request.model}` does not exist.", 404, "model")
        pooler_config = self.engine.model_config.pooler_config
        if pooler_config is None:
            raise OpenAIError("This model generates text and does not support the Embeddings API; start it with "
                              "--runner pooling to embed.", 400, "model")
        try:
            params = PoolingParams(request.truncate_prompt_tokens, request.dimensions, request.normalize, "embed")
            pooler_config.check_dimensions(request.dimensions)
        except ValueError as e:
            raise OpenAIError(str(e), 400, str(e).split(" ", 1)[0].strip(":")) from e
        check_chars = request.truncate_prompt_tokens is None  # a truncated input may be long
        prompts = [await self._tokenize(item, request.add_special_tokens, check_chars) for item in request.inputs()]
        request_id = random_id("embd")
        group = await self.start(request_id, prompts, params, False)
        model = request.model or self.served_model_names[0]
        return await self.respond(raw, group, False, _no_stream,
                                  lambda g: self._full(g, request_id, model, request.encoding_format))

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

    async def _full(self, group: RequestGroup, request_id: str, model: str, encoding_format: str) -> dict[str, Any]:
        data: list[dict[str, Any] | None] = [None] * len(group.streams)
        num_prompt_tokens = 0
        async for index, output in group.merged():
            if not output.finished:
                continue
            vector = output.outputs.data.numpy()
            num_prompt_tokens += len(output.prompt_token_ids)
            data[index] = {"index": index, "object": "embedding", "embedding": _encode(vector, encoding_format)}
        return {
            "id": request_id, "object": "list", "created": group.created, "model": model, "data": data,
            "usage": {"prompt_tokens": num_prompt_tokens, "total_tokens": num_prompt_tokens},
        }


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _no_stream(_: RequestGroup) -> Any:
    """respond() asks for chunks only when streaming, and embeddings never stream."""
    raise OpenAIError("Embeddings are not streamed.", 400, "stream")
