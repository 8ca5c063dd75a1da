"""The wrapper a decoder-only model file puts around its decoder stack (the "body"): it
builds the body, adds the LM head, ties the head to the input embedding when the config
says so, and gives the engine ``forward``, ``compute_logits`` and ``attention_layers``.

Many architectures differ only below this level, so their ``...ForCausalLM`` classes were
the same dozen lines with other attribute names. The names are kept (they are the
checkpoint's prefixes: ``transformer.h.0...``, ``gpt_neox.embed_in.weight``), so a
subclass says where things are instead of rewriting the wrapper:

- ``body_name`` / ``head_name``: the attributes of the body and the LM head;
- ``tie_word_embeddings_default``: whether the head is tied when the config does not say
  (checkpoints of one family tie, those of another do not);
- ``make_body``: how to build the body (it runs ``forward(input_ids, positions)``);
- ``input_embedding``: the body's token embedding, whose weight a tied head shares;
- ``attention_layers``: where each layer's ``Attention`` sits, when not at
  ``<body>.layers[i].self_attn.attn``.

Config checks, logit extras (a head bias, soft-capping, scaling) and ``load_weights`` stay
in the model files: they are what makes each architecture different. Llama's wrapper is not
built on this one: pipeline stages, quantization and LoRA change how it builds its head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import ParallelLMHead


class CausalLMWrapper(nn.Module):
    body_name = "model"  # the checkpoint's prefix of the decoder stack: model, transformer, gpt_neox
    head_name = "lm_head"  # the checkpoint's name of the output projection (GPT-NeoX: embed_out)
    tie_word_embeddings_default = True  # when the config has no tie_word_embeddings

    def __init__(self, config: Any, max_position: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.add_module(self.body_name, self.make_body(config, max_position or config.max_position_embeddings))
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", self.tie_word_embeddings_default))
        self.add_module(self.head_name, ParallelLMHead(config.vocab_size, config.hidden_size))
        if self.tie_word_embeddings:
            self.head.weight = self.input_embedding().weight

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        """The decoder stack: embedding, layers, final norm; hidden states out."""
        raise NotImplementedError

    @property
    def body(self) -> nn.Module:
        return getattr(self, self.body_name)

    @property
    def head(self) -> ParallelLMHead:
        return getattr(self, self.head_name)

    def input_embedding(self) -> nn.Module:
        return self.body.embed_tokens

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.body(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.head.compute_logits(hidden_states)

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn.attn for layer in self.body.layers]
