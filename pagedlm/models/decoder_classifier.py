"""Heads on decoders (pooling only): sequence classification and reward models.

``as_seq_cls_model(LlamaForCausalLM)`` reads like transformers' ``LlamaForSequenceClassification``
(also Mistral, Qwen2, Qwen3 and Gemma 2's): the decoder, then ``score``, a linear layer without
bias, on the last token's hidden state. transformers picks the last token that is not
``pad_token_id``; prompts here are never padded, so that is the prompt's last token (vLLM's
LAST pooling: a prompt that itself ends in the pad token is still read at its last token).

``Qwen2ForRewardModel`` (vLLM's ``qwen2_rm.py``; transformers has no such class) puts a two-layer
MLP, ``score.0`` -> ReLU -> ``score.2``, on every token: one reward per prompt token.

As with the encoders' heads, ``forward`` returns the decoder's hidden states and the pooler
calls ``classify`` on the rows it reads (the last token, or every token). The heads run in
float32, as vLLM's (its head dtype for pooling models).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from pagedlm.config import ConfigError
from pagedlm.layers.linear import ReplicatedLinear
from pagedlm.models.adapters import as_pooling_model
from pagedlm.models.llama import LlamaForCausalLM


@contextmanager
def _float32_params() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _check_plain_head(config: Any, arch: str) -> None:
    """vLLM also builds a classifier from a causal LM's vocabulary rows (``classifier_from_token``
    / ``method``, e.g. Qwen3-Reranker with hf_overrides); pagedlm loads only trained heads."""
    for key in ("classifier_from_token", "method", "is_original_qwen3_reranker"):
        if getattr(config, key, None):
            raise ConfigError(f"{arch}: config.{key} asks for a classifier converted from the LM head's token rows "
                              "(vLLM's 'LLM as reranker', e.g. the original Qwen3-Reranker); pagedlm does not convert "
                              "generative checkpoints: use a checkpoint saved with its trained score head")


def _load_with_head(model: nn.Module, base_load: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
    """The ``score.*`` tensors into the head; the rest through the decoder's loader."""
    head = {name: param for name, param in model.named_parameters() if name.startswith("score.")}
    loaded: set[str] = set()

    def decoder_weights() -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in weights:
            if name in head:
                head[name].weight_loader(head[name], tensor, None)
                loaded.add(name)
            else:
                yield name, tensor

    loaded |= base_load(decoder_weights())
    return loaded


def as_seq_cls_model(cls: type[nn.Module]) -> type[nn.Module]:
    """A decoder class with a ``score`` head (hidden -> num_labels, no bias) on the last token."""

    class ForSequenceClassification(as_pooling_model(cls)):  # type: ignore[misc]
        is_sequence_classifier = True
        default_pooling_type = "LAST"
        supports_pp = False  # the head runs in the pooler of the one stage
        supports_lora = False

        def __init__(self, config: Any, max_position: int | None = None, **kwargs: Any) -> None:
            _check_plain_head(config, type(self).__name__)
            super().__init__(config, max_position, **kwargs)
            with _float32_params():
                self.score = ReplicatedLinear(config.hidden_size, int(config.num_labels), bias=False)

        def classify(self, states: torch.Tensor) -> torch.Tensor:
            """[B, hidden] last-token hidden states -> [B, num_labels] logits (float32)."""
            return self.score(states.float())

        def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
            return _load_with_head(self, super().load_weights, weights)

    name = cls.__name__.removesuffix("ForCausalLM") + "ForSequenceClassification"
    ForSequenceClassification.__name__ = ForSequenceClassification.__qualname__ = name
    return ForSequenceClassification


class Qwen2ForRewardModel(as_pooling_model(LlamaForCausalLM)):  # type: ignore[misc]
    """vLLM's Qwen2ForRewardModel: one label (the config's num_labels is ignored, as vLLM
    forces it to 1), the MLP head on every token."""

    is_reward_model = True
    default_pooling_type = "ALL"
    supports_pp = False
    supports_lora = False

    def __init__(self, config: Any, max_position: int | None = None, **kwargs: Any) -> None:
        super().__init__(config, max_position, **kwargs)
        hidden = config.hidden_size
        with _float32_params():
            self.score = nn.Sequential(ReplicatedLinear(hidden, hidden, bias=True), nn.ReLU(),
                                       ReplicatedLinear(hidden, 1, bias=True))

    def classify(self, states: torch.Tensor) -> torch.Tensor:
        """[N, hidden] hidden states -> [N, 1] rewards (float32)."""
        return self.score(states.float())

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return _load_with_head(self, super().load_weights, weights)
