"""The ``...ForCausalLM`` wrapper around a decoder stack (the "body"): it builds the body,
adds the LM head, ties the head to the token embedding when the config says so, and gives
the engine ``forward``, ``compute_logits`` and ``attention_layers``.

Many architectures differ only below this level, so their wrappers were the same dozen
lines with other module names. The names must stay (they are the checkpoint's: GPT-2's
``transformer.h.0.attn``, GPT-NeoX's ``embed_out``), so a subclass states them as class
attributes, says how its body is built (``make_body``) and whether its head is tied when
the config does not say (``tie_word_embeddings_default``). A family that sets
``supports_quantization`` reads ``self.quant_config`` in its ``make_body`` (set before the body
is built; the model loader passes it only to such families). Config checks, logit extras (a
head bias, soft-capping, scaling) and ``load_weights`` stay in the model files. Llama's
wrapper is not one of these: pipeline stages and LoRA shape how it is built."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import ParallelLMHead
from pagedlm.layers.quantization import QuantizationConfig


class CausalLMWrapper(nn.Module):
    body_name = "model"  # the decoder stack
    embedding_name = "embed_tokens"  # its token embedding (in the body)
    layers_name = "layers"  # its list of decoder layers (in the body)
    attention_name = "self_attn.attn"  # each decoder layer's Attention (in the layer)
    head_name = "lm_head"
    tie_word_embeddings_default = True

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        super().__init__()
        self.config = config
        self.quant_config = quant_config
        self.add_module(self.body_name, self.make_body(config, max_position or config.max_position_embeddings))
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", self.tie_word_embeddings_default))
        self.add_module(self.head_name, ParallelLMHead(config.vocab_size, config.hidden_size))
        if self.tie_word_embeddings:
            self.head.weight = self.body.get_submodule(self.embedding_name).weight

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        """The decoder stack: (input_ids, positions) -> final hidden states."""
        raise NotImplementedError

    @property
    def body(self) -> nn.Module:
        return getattr(self, self.body_name)

    @property
    def head(self) -> ParallelLMHead:
        return getattr(self, self.head_name)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.body(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.head.compute_logits(hidden_states)

    def attention_layers(self) -> list[Attention]:
        layers = self.body.get_submodule(self.layers_name)
        return [layer.get_submodule(self.attention_name) for layer in layers]
