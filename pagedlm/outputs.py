"""Output objects returned by LLM.generate / the async engine (vLLM-compatible)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# One dict per position: {token_id: Logprob}; prompt logprobs start with None.
SampleLogprobs = list[dict[int, Logprob]]
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None
    finished_time: float | None = None
    num_preemptions: int = 0


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: SampleLogprobs | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None  # None for a prompt given as embeddings (prompt_embeds), as vLLM's
    prompt_logprobs: PromptLogprobs | None
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: RequestMetrics | None = None
    error: str | None = field(default=None)
    lora_request: Any = None  # the LoRARequest the request ran with, None for the base model


@dataclass
class PoolingOutput:
    """data: a torch.Tensor, [hidden] for "embed" or [num_prompt_tokens, hidden] for "token_embed"."""

    data: Any


@dataclass
class PoolingRequestOutput:
    request_id: str
    outputs: Any  # PoolingOutput, or EmbeddingOutput in an EmbeddingRequestOutput
    prompt_token_ids: list[int]
    finished: bool
    num_cached_tokens: int = 0
    prompt: str | None = None
    metrics: RequestMetrics | None = None
    error: str | None = field(default=None)


@dataclass
class EmbeddingOutput:
    embedding: list[float]

    @staticmethod
    def from_base(output: PoolingOutput) -> "EmbeddingOutput":
        if output.data.dim() != 1:
            raise ValueError("pooled data is not a single embedding vector (token_embed output?)")
        return EmbeddingOutput(output.data.tolist())

    @property
    def hidden_size(self) -> int:
        return len(self.embedding)


@dataclass
class EmbeddingRequestOutput(PoolingRequestOutput):
    @staticmethod
    def from_base(output: PoolingRequestOutput) -> "EmbeddingRequestOutput":
        return EmbeddingRequestOutput(output.request_id, EmbeddingOutput.from_base(output.outputs),
                                      output.prompt_token_ids, output.finished, output.num_cached_tokens,
                                      output.prompt, output.metrics, output.error)


@dataclass
class ClassificationOutput:
    """One prompt's class probabilities (softmax over the labels; sigmoid for one label), or
    its logits with use_activation=False."""

    probs: list[float]

    @staticmethod
    def from_base(output: PoolingOutput) -> "ClassificationOutput":
        if output.data.dim() != 1:
            raise ValueError("pooled data is not a single probability vector")
        return ClassificationOutput(output.data.tolist())

    @property
    def num_classes(self) -> int:
        return len(self.probs)


@dataclass
class ClassificationRequestOutput(PoolingRequestOutput):
    @staticmethod
    def from_base(output: PoolingRequestOutput) -> "ClassificationRequestOutput":
        return ClassificationRequestOutput(output.request_id, ClassificationOutput.from_base(output.outputs),
                                           output.prompt_token_ids, output.finished, output.num_cached_tokens,
                                           output.prompt, output.metrics, output.error)


@dataclass
class ScoringOutput:
    """The score of one pair of texts: the cosine similarity of their embeddings (embedding
    models), or a cross-encoder's relevance (its one label through its activation), as vLLM's."""

    score: float


@dataclass
class ScoringRequestOutput:
    """One pair's result of ``LLM.score``: with an embedding model ``request_id`` joins the two
    embedding requests' ids and ``prompt_token_ids`` the two prompts' tokens, as vLLM's; with a
    cross-encoder they are the pair's one request's (the pair encoded as one sequence)."""

    request_id: str
    outputs: ScoringOutput
    prompt_token_ids: list[int]
    finished: bool = True
