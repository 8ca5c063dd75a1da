"""POST /score, /v1/score and /rerank, /v1/rerank (vLLM's, and Jina's / Cohere's rerank shape).
With a cross-encoder (a sequence-classification model with one label) each pair is encoded as
one sequence with its token types and scored by the model's head (sigmoid of its logit unless
``use_activation`` is false); with an embedding model a pair's score is the cosine similarity of
the two texts' embeddings, as vLLM scores with embedding models.

``/score``: ``text_1`` (a string, or a list) against ``text_2`` (a string or a list): one
``text_1`` is scored against every ``text_2``, otherwise the two lists pair up by position;
vLLM's other names for the pair (``data_1`` / ``data_2``, ``queries`` / ``documents``,
``queries`` / ``items``) work the same. ``/rerank`` (also ``/v2/rerank``, Cohere's v2 client):
``query`` against ``documents``, results ordered by relevance, the best ``top_n`` (0: all).
Both take ``truncate_prompt_tokens`` (a cross-encoder's pair is cut by the tokenizer, longest
text first, so ``truncation_side`` "right" is refused there), ``priority``, ``request_id`` and
``cache_salt``, and for cross-encoders ``use_activation``; with an embedding model
each distinct input is embedded once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from fastapi import Request
from fastapi.responses import Response
from pydantic import field_validator, model_validator

from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.engine.input_processor import InvalidRequestError
from pagedlm.entrypoints.openai.serving_common import RequestGroup, engine_request_id, to_openai_error
from pagedlm.entrypoints.score_utils import cross_encoder_prompt, pair_max_length
from pagedlm.entrypoints.openai.serving_embedding import (
    MAX_EMBEDDING_INPUTS,
    OpenAIServingEmbedding,
    PoolingFields,
    _no_stream,
)
from pagedlm.pooling_params import PoolingParams


def _texts(value: Any) -> str | list[str]:
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a string or a non-empty list of strings")
    if len(value) > MAX_EMBEDDING_INPUTS:
        raise ValueError(f"at most {MAX_EMBEDDING_INPUTS} texts per request, got {len(value)}")
    return value


class _ScoreFields(PoolingFields):
    use_activation: bool | None = None  # cross-encoders: False gives the raw logit (vLLM's)
    # vLLM's, refused when set: per-text truncation and score chat templates.
    max_tokens_per_query: int = 0
    max_tokens_per_doc: int = 0
    instruction: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    UNSUPPORTED: ClassVar[dict[str, tuple[tuple[Any, ...], str]]] = {
        **PoolingFields.UNSUPPORTED,
        "max_tokens_per_query": ((0,), "no per-text truncation; use truncate_prompt_tokens"),
        "max_tokens_per_doc": ((0,), "no per-text truncation; use truncate_prompt_tokens"),
        "instruction": ((None,), "no score chat templates"),
        "chat_template_kwargs": ((None,), "no score chat templates"),
    }


# vLLM's names for /score's two sides; a request uses exactly one pair.
SCORE_PAIRS = (("text_1", "text_2"), ("data_1", "data_2"), ("queries", "documents"), ("queries", "items"))


class ScoreRequest(_ScoreFields):
    text_1: str | list[str] | None = None
    text_2: str | list[str] | None = None
    data_1: str | list[str] | None = None
    data_2: str | list[str] | None = None
    queries: str | list[str] | None = None
    documents: str | list[str] | None = None
    items: str | list[str] | None = None

    @field_validator("text_1", "text_2", "data_1", "data_2", "queries", "documents", "items", mode="before")
    @classmethod
    def check_texts(cls, value: Any) -> str | list[str] | None:
        return None if value is None else _texts(value)

    @model_validator(mode="after")
    def _one_pair(self) -> "ScoreRequest":
        self.pair_names()
        return self

    def pair_names(self) -> tuple[str, str]:
        """The names this request gives its two sides by (one of SCORE_PAIRS)."""
        given = {name for pair in SCORE_PAIRS for name in pair if getattr(self, name) is not None}
        for pair in SCORE_PAIRS:
            if given == set(pair):
                return pair
        names = ", ".join(f"{a} and {b}" for a, b in SCORE_PAIRS)
        raise ValueError(f"give one pair of inputs: {names}; got {sorted(given) or 'none'}")

    def sides(self) -> tuple[list[str], list[str]]:
        first, second = (getattr(self, name) for name in self.pair_names())
        return ([first] if isinstance(first, str) else first), ([second] if isinstance(second, str) else second)


class RerankRequest(_ScoreFields):
    query: str
    documents: list[str]
    top_n: int = 0  # 0 or less: every document (vLLM's rule)
    return_documents: bool = True

    @field_validator("documents", mode="before")
    @classmethod
    def check_documents(cls, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise ValueError("must be a non-empty list of strings")
        return _texts(value)


class OpenAIServingScore(OpenAIServingEmbedding):
    async def create_score(self, request: ScoreRequest, raw: Request) -> Response:
        first, second = request.sides()
        if len(first) not in (1, len(second)):
            name_1, name_2 = request.pair_names()
            raise OpenAIError(f"{name_1} has {len(first)} texts and {name_2} {len(second)}: give one {name_1}, or "
                              f"as many as {name_2}", 400, name_1)
        pairs = [(0 if len(first) == 1 else i, i) for i in range(len(second))]
        request_id, model = self.response_id("score", request, raw), self.model_name(request)

        def body(group: RequestGroup, scores: list[float], tokens: int) -> dict[str, Any]:
            return {"id": request_id, "object": "list", "created": group.created, "model": model,
                    "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0}}

        return await self._score(request, raw, request_id, first, second, pairs, body)

    async def create_rerank(self, request: RerankRequest, raw: Request) -> Response:
        if not request.documents:
            raise OpenAIError("documents must not be empty", 400, "documents")
        request_id, model = self.response_id("rerank", request, raw), self.model_name(request)
        pairs = [(0, i) for i in range(len(request.documents))]

        def body(group: RequestGroup, scores: list[float], tokens: int) -> dict[str, Any]:
            order = sorted(range(len(scores)), key=lambda i: -scores[i])
            results = [{"index": i, "relevance_score": scores[i],
                        **({"document": {"text": request.documents[i]}} if request.return_documents else {})}
                       for i in order[:request.top_n if request.top_n > 0 else None]]
            return {"id": request_id, "model": model, "usage": {"total_tokens": tokens}, "results": results}

        return await self._score(request, raw, request_id, [request.query], request.documents, pairs, body)

    async def _score(self, request: _ScoreFields, raw: Request, request_id: str, first: list[str],
                     second: list[str], pairs: list[tuple[int, int]], body: Any) -> Response:
        if request.model and request.model not in self.served_model_names:
            raise OpenAIError(f"The model `{request.model}` does not exist.", 404, "model")
        if self.engine.model_config.pooler_config is None:
            raise OpenAIError("This model generates text and cannot score; scoring needs an embedding model "
                              "(--runner pooling).", 400, "model")
        self.check_pooling_fields(request)
        if self.engine.model_config.pooler_config.is_classifier:
            return await self._cross_encoder_score(request, raw, request_id, first, second, pairs, body)
        try:
            params = PoolingParams(request.truncate_prompt_tokens, use_activation=request.use_activation, task="embed")
        except ValueError as e:
            raise OpenAIError(str(e), 400, "use_activation") from e
        check_chars = request.truncate_prompt_tokens is None
        texts = list(dict.fromkeys(first + second))  # each distinct text embedded once
        prompts = self.cut([await self._tokenize(text, True, check_chars) for text in texts], request)
        group = await self.start(engine_request_id(request_id, bool(request.request_id)), prompts, params, False,
                                 priority=request.priority, cache_salt=request.cache_salt)

        async def full(group: RequestGroup) -> dict[str, Any]:
            vectors: list[torch.Tensor | None] = [None] * len(texts)
            tokens = 0
            async for index, output in group.merged():
                if output.finished:
                    vectors[index] = output.outputs.data.float()
                    tokens += len(output.prompt_token_ids)
            where = {text: i for i, text in enumerate(texts)}
            a = torch.stack([vectors[where[first[i]]] for i, _ in pairs])
            b = torch.stack([vectors[where[second[j]]] for _, j in pairs])
            return body(group, F.cosine_similarity(a, b, dim=-1).tolist(), tokens)

        return await self.respond(raw, group, False, _no_stream, full)

    async def _cross_encoder_score(self, request: _ScoreFields, raw: Request, request_id: str, first: list[str],
                                   second: list[str], pairs: list[tuple[int, int]], body: Any) -> Response:
        """Each pair one request: the tokenizer's pair encoding ([CLS] text_1 [SEP] text_2 [SEP]
        with its token types for BERT; see score_utils for decoders)."""
        if request.truncation_side == "right":  # the tokenizer cuts a pair longest text first
            raise OpenAIError("truncation_side 'right' is not supported by a cross-encoder: truncate_prompt_tokens "
                              "cuts the pair's longer text first; remove truncation_side.", 400, "truncation_side")
        try:
            model_config = self.engine.model_config
            max_length = pair_max_length(request.truncate_prompt_tokens, model_config.max_model_len)
            prompts = [await self.engine.run_in_tokenizer(cross_encoder_prompt, self.tokenizer, first[i], second[j],
                                                          max_length, model_config.hf_config) for i, j in pairs]
            params = PoolingParams(use_activation=request.use_activation, task="score")
        except (InvalidRequestError, ValueError) as e:
            raise to_openai_error(e) from e
        group = await self.start(engine_request_id(request_id, bool(request.request_id)),
                                 [(p["prompt"], p["prompt_token_ids"]) for p in prompts], params, False,
                                 priority=request.priority, token_type_ids=[p.get("token_type_ids") for p in prompts],
                                 cache_salt=request.cache_salt)

        async def full(group: RequestGroup) -> dict[str, Any]:
            scores, tokens = [0.0] * len(pairs), 0
            async for index, output in group.merged():
                if output.finished:
                    scores[index] = float(output.outputs.data[0])
                    tokens += len(output.prompt_token_ids)
            return body(group, scores, tokens)

        return await self.respond(raw, group, False, _no_stream, full)
