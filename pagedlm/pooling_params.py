"""PoolingParams: per-request settings of pooling (embedding) requests, as vLLM names them."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from pagedlm.sampling_params import RequestOutputKind, check_truncate_prompt_tokens

# "embed": one vector per prompt; "token_embed": one vector per prompt token.
POOLING_TASKS = ("embed", "token_embed")


@dataclass
class PoolingParams:
    """truncate_prompt_tokens: keep only the last k prompt tokens (-1: up to max_model_len).
    dimensions: Matryoshka truncation of the embedding (only where the model supports it).
    normalize: L2-normalise the output (None: the model's default).
    softmax, activation, use_activation: vLLM's settings for classification and cross-encoder
    scoring models, which pagedlm does not serve; kept in vLLM's field order, and refused when set.
    task: set by LLM.embed / LLM.encode and the server, not usually by users."""

    truncate_prompt_tokens: int | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    softmax: bool | None = None
    activation: bool | None = None
    use_activation: bool | None = None
    task: str | None = None
    # A pooling request has one output, when it finishes (vLLM's default for pooling too).
    output_kind: RequestOutputKind = RequestOutputKind.FINAL_ONLY

    def __post_init__(self) -> None:
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        if self.dimensions is not None and (not isinstance(self.dimensions, int) or self.dimensions < 1):
            raise ValueError(f"dimensions must be a positive integer, got {self.dimensions!r}")
        activation_set = [name for name in ("softmax", "activation", "use_activation") if getattr(self, name) is not None]
        if activation_set:  # vLLM's own check: an embedding task takes only dimensions and normalize
            raise ValueError(f"Task {self.task or 'embed'} only supports ['dimensions', 'normalize'] parameters, does "
                             f"not support {activation_set} parameters (they apply to classification and "
                             "cross-encoder models, which pagedlm does not serve)")
        if self.normalize is not None and not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be a bool or None, got {self.normalize!r}")
        if self.task is not None and self.task not in POOLING_TASKS:
            raise ValueError(f"task must be one of {POOLING_TASKS}, got {self.task!r}")
        if RequestOutputKind(self.output_kind) != RequestOutputKind.FINAL_ONLY:
            raise ValueError("pooling requests have one final output: output_kind must be FINAL_ONLY")

    def clone(self) -> "PoolingParams":
        return copy.deepcopy(self)
