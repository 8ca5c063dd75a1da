"""PoolingParams: per-request settings of pooling requests (embedding, classification and
cross-encoder scoring), as vLLM names them."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pagedlm.sampling_params import RequestOutputKind, check_truncate_prompt_tokens

# "embed": one vector per prompt; "token_embed": one vector per prompt token;
# "classify": class probabilities of a sequence-classification model; "score": a
# cross-encoder's relevance score of a (query, document) pair (num_labels == 1);
# "token_classify": a reward model's reward per prompt token (LLM.reward).
POOLING_TASKS = ("embed", "token_embed", "classify", "score", "token_classify")
# The per-request settings each task takes (vLLM's valid_parameters).
TASK_PARAMETERS = {"embed": ("dimensions", "normalize"), "token_embed": ("dimensions", "normalize"),
                   "classify": ("use_activation",), "score": ("use_activation",),
                   "token_classify": ("use_activation",)}
_HEAD_TASKS = ("classify", "score", "token_classify")
_SETTINGS = ("dimensions", "normalize", "use_activation")
# extra_kwargs keys (internal, set by the input processor): the index of the first token of
# the second segment of a text pair (vLLM's compressed token_type_ids).
EXTRA_KWARGS = ("compressed_token_type_ids",)


@dataclass
class PoolingParams:
    """truncate_prompt_tokens: keep only the last k prompt tokens (-1: up to max_model_len).
    dimensions: Matryoshka truncation of the embedding (only where the model supports it).
    normalize: L2-normalise the output (None: the model's default).
    softmax, activation: vLLM's deprecated names of use_activation (classify / score).
    use_activation: apply the classifier's activation (softmax, or sigmoid for one label;
    None: yes) to classify, score and token_classify (reward) outputs; False gives the raw logits.
    task: set by LLM.embed / classify / score / reward / encode and the server, not usually by users.
    extra_kwargs: internal (vLLM's): where a text pair's second segment starts."""

    truncate_prompt_tokens: int | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    softmax: bool | None = None
    activation: bool | None = None
    use_activation: bool | None = None
    task: str | None = None
    # A pooling request has one output, when it finishes (vLLM's default for pooling too).
    output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY
    extra_kwargs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        if self.dimensions is not None and (not isinstance(self.dimensions, int) or self.dimensions < 1):
            raise ValueError(f"dimensions must be a positive integer, got {self.dimensions!r}")
        for name in ("normalize", "softmax", "activation", "use_activation"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"{name} must be a bool or None, got {value!r}")
        if self.task is not None and self.task not in POOLING_TASKS:
            raise ValueError(f"task must be one of {POOLING_TASKS}, got {self.task!r}")
        if RequestOutputKind(self.output_kind) != RequestOutputKind.FINAL_ONLY:
            raise ValueError("pooling requests have one final output: output_kind must be FINAL_ONLY")
        unknown = sorted(set(self.extra_kwargs or {}) - set(EXTRA_KWARGS))
        if unknown:
            raise ValueError(f"extra_kwargs keys {unknown} are not supported (internal: {list(EXTRA_KWARGS)})")
        if self.task is not None:
            self.verify_task()

    def verify_task(self) -> None:
        """vLLM's check: each task takes only its own settings (embedding tasks dimensions and
        normalize; classify and score use_activation, or its deprecated names softmax and
        activation, which fold into it here)."""
        for old in ("softmax", "activation"):
            value = getattr(self, old)
            if value is not None and self.task in _HEAD_TASKS:
                if self.use_activation not in (None, value):
                    raise ValueError(f"{old}={value} conflicts with use_activation={self.use_activation}; "
                                     f"{old} is the deprecated name of use_activation: set only use_activation")
                self.use_activation, value = value, None
                setattr(self, old, None)
        valid = TASK_PARAMETERS[self.task]
        invalid = [name for name in ("softmax", "activation", *_SETTINGS)
                   if name not in valid and getattr(self, name) is not None]
        if invalid:  # vLLM's message
            raise ValueError(f"Task {self.task} only supports {list(valid)} parameters, does not support "
                             f"{invalid} parameters")

    def clone(self) -> "PoolingParams":
        return copy.deepcopy(self)
