"""POST /classify (and /v1/classify), vLLM's classification API for sequence-classification
models: ``input`` (a string, a list of strings, token ids or lists of token ids), vLLM's
``truncate_prompt_tokens`` (``truncation_side``), ``add_special_tokens``, ``priority``, ``request_id``,
``cache_salt`` and ``use_activation`` (false: the logits; ``softmax`` and ``activation`` are its deprecated names).
The answer: ``{"id": "classify-...", "object": "list", "created", "model", "data": [{"index",
"label", "probs", "num_classes"}], "usage"}``, ``label`` the checkpoint's id2label name of the
most probable class.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import field_validator

from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.entrypoints.openai.serving_common import RequestGroup, engine_request_id
from pagedlm.entrypoints.openai.serving_embedding import (
    EmbeddingRequest,
    OpenAIServingEmbedding,
    PoolingFields,
    _no_stream,
)
from pagedlm.pooling_params import PoolingParams


class ClassificationRequest(PoolingFields):
    input: Any
    add_special_tokens: bool = True
    use_activation: bool | None = None
    softmax: bool | None = None  # deprecated names of use_activation (vLLM's)
    activation: bool | None = None

    @field_validator("input")
    @classmethod
    def _check_input(cls, value: Any) -> Any:
        return EmbeddingRequest._check_input(value)  # the same input shapes as /v1/embeddings

    def inputs(self) -> list[str | list[int]]:
        return EmbeddingRequest.model_construct(input=self.input).inputs()


class OpenAIServingClassification(OpenAIServingEmbedding):
    async def create_classify(self, request: ClassificationRequest, raw: Request) -> Response:
        if request.model and request.model not in self.served_model_names:
            raise OpenAIError(f"The model `{request.model}` does not exist.", 404, "model")
        pooler_config = self.engine.model_config.pooler_config
        if pooler_config is None or not pooler_config.is_classifier:
            raise OpenAIError("The model does not support Classification API: it needs a sequence-classification "
                              "(*ForSequenceClassification) checkpoint.", 400, "model")
        self.check_pooling_fields(request)
        inputs = request.inputs()
        try:
            params = PoolingParams(request.truncate_prompt_tokens, softmax=request.softmax,
                                   activation=request.activation, use_activation=request.use_activation,
                                   task="classify")
        except ValueError as e:
            raise OpenAIError(str(e), 400, "use_activation") from e
        check_chars = request.truncate_prompt_tokens is None
        prompts = self.cut([await self._tokenize(item, request.add_special_tokens, check_chars) for item in inputs],
                           request)
        request_id = self.response_id("classify", request, raw)
        group = await self.start(engine_request_id(request_id, bool(request.request_id)), prompts, params, False,
                                 priority=request.priority, cache_salt=request.cache_salt)
        model, labels = self.model_name(request), pooler_config.id2label

        async def full(group: RequestGroup) -> dict[str, Any]:
            data: list[dict[str, Any]] = [{}] * len(prompts)
            tokens = 0
            async for index, output in group.merged():
                if output.finished:
                    probs = output.outputs.data.tolist()
                    best = max(range(len(probs)), key=probs.__getitem__)
                    data[index] = {"index": index, "label": labels[best], "probs": probs, "num_classes": len(probs)}
                    tokens += len(output.prompt_token_ids)
            return {"id": request_id, "object": "list", "created": group.created, "model": model, "data": data,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}

        return await self.respond(raw, group, False, _no_stream, full)
