"""Sequence-classification heads on the BERT encoder: cross-encoder rerankers (one label, e.g.
ms-marco-MiniLM, bge-reranker) and classifiers (several labels).

Read like Hugging Face's ``BertForSequenceClassification`` (the BERT pooler, dense + tanh on
the CLS token, then the ``classifier`` linear) and ``RobertaForSequenceClassification`` /
``XLMRobertaForSequenceClassification`` (the ``classifier`` head: dense + tanh + ``out_proj``
on the ``<s>`` token; positions numbered from ``padding_idx + 1``). ``forward`` returns the
encoder's hidden states like every model; the pooler reads the first token of each prompt
and calls ``classify`` for its logits. A text pair (query, document) arrives as one sequence
with its token types (BERT's second segment is type 1).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pagedlm.models.bert import BertModel
from pagedlm.layers.linear import ReplicatedLinear


class _SequenceClassifier(nn.Module):
    supports_generation = False
    is_sequence_classifier = True
    accepts_token_type_ids = True  # the runner passes a text pair's token types
    default_pooling_type = "CLS"
    encoder_prefix = ""  # the checkpoint's name of the encoder ("bert." / "roberta.")

    def __init__(self, config: Any, max_position: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = BertModel(config, max_position, self.position_offset(config))

    @staticmethod
    def position_offset(config: Any) -> int:
        return 0

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(input_ids, positions, token_type_ids)  # [T, hidden]

    def classify(self, first_token_states: torch.Tensor) -> torch.Tensor:
        """[B, hidden] first-token hidden states -> [B, num_labels] logits."""
        raise NotImplementedError

    def attention_layers(self) -> list[nn.Module]:
        return []  # an encoder keeps no KV cache

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        head = dict(self.head_parameters())
        loaded: set[str] = set()

        def encoder_weights() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name in head:
                    head[name].weight_loader(head[name], tensor, None)
                    loaded.add(name)
                elif name.startswith(self.encoder_prefix):
                    yield name.removeprefix(self.encoder_prefix), tensor
                else:
                    raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in "
                                     f"{type(self).__name__}")

        loaded |= {f"encoder.{name}" for name in self.encoder.load_weights(encoder_weights())}
        return {self.checkpoint_to_param(n) for n in loaded}

    def head_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """(checkpoint name, parameter) of the head's tensors."""
        raise NotImplementedError

    def checkpoint_to_param(self, name: str) -> str:
        return name


class BertForSequenceClassification(_SequenceClassifier):
    encoder_prefix = "bert."

    def __init__(self, config: Any, max_position: int | None = None) -> None:
        super().__init__(config, max_position)
        self.pooler = ReplicatedLinear(config.hidden_size, config.hidden_size, True)
        self.classifier = ReplicatedLinear(config.hidden_size, config.num_labels, True)

    def classify(self, first_token_states: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(first_token_states)))

    def head_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        for part in ("weight", "bias"):
            yield f"bert.pooler.dense.{part}", getattr(self.pooler, part)
            yield f"classifier.{part}", getattr(self.classifier, part)

    def checkpoint_to_param(self, name: str) -> str:
        return name.replace("bert.pooler.dense.", "pooler.")


class RobertaForSequenceClassification(_SequenceClassifier):
    """Also XLMRobertaForSequenceClassification (the same modules)."""

    encoder_prefix = "roberta."

    def __init__(self, config: Any, max_position: int | None = None) -> None:
        super().__init__(config, max_position)
        self.dense = ReplicatedLinear(config.hidden_size, config.hidden_size, True)
        self.out_proj = ReplicatedLinear(config.hidden_size, config.num_labels, True)

    @staticmethod
    def position_offset(config: Any) -> int:
        # RoBERTa's position ids start after its padding index (HF create_position_ids_from_input_ids).
        return int(config.pad_token_id) + 1

    def classify(self, first_token_states: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(first_token_states)))

    def head_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        for part in ("weight", "bias"):
            yield f"classifier.dense.{part}", getattr(self.dense, part)
            yield f"classifier.out_proj.{part}", getattr(self.out_proj, part)

    def checkpoint_to_param(self, name: str) -> str:
        return name.removeprefix("classifier.")
