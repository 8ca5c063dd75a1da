"""A generative model class as a pooling model: the same layers without the LM head.

Used for ``runner="pooling"`` on a decoder (``LlamaForCausalLM`` checkpoints pooled by their
last token or mean) and for decoder checkpoints saved without a head (architectures such as
``LlamaModel`` / ``Qwen3Model``, whose tensor names lack the ``model.`` prefix).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn


def as_pooling_model(cls: type[nn.Module]) -> type[nn.Module]:
    class PoolingModel(cls):  # type: ignore[valid-type, misc]
        supports_generation = False
        default_pooling_type = "LAST"

        def __init__(self, config: Any, max_position: int | None = None, **kwargs: Any) -> None:
            super().__init__(config, max_position, **kwargs)
            del self.lm_head  # the output is the hidden states; no vocabulary projection

        def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("a pooling model has no LM head and computes no logits")

        def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
            return super().load_weights(_without_head(weights))

    PoolingModel.__name__ = PoolingModel.__qualname__ = f"{cls.__name__}AsPooling"
    return PoolingModel


def _without_head(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in weights:
        if name.startswith("lm_head."):
            continue
        yield (name if name.startswith("model.") else f"model.{name}"), tensor
