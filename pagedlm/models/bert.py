"""BERT encoders (BertModel, e.g. sentence-transformers' all-MiniLM-L6-v2) for pooling.

Reads like Hugging Face's ``modeling_bert``: learned absolute position and token-type
embeddings, post-norm LayerNorm after each residual add, GELU MLP, bidirectional attention.
Module names follow the checkpoint so weights load by name; query/key/value load into one
fused ``qkv_proj``. There is no LM head: the model serves only
``runner="pooling"`` (CLS pooling unless the checkpoint's sentence-transformers config says
otherwise). The sequence-classification heads (cross-encoders, classifiers) are in
``bert_classifier.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.config import ConfigError, attention_shape
from pagedlm.layers.embedding import VocabEmbedding
from pagedlm.layers.encoder_attention import EncoderOnlyAttention
from pagedlm.layers.linear import QKVParallelLinear, ReplicatedLinear, RowParallelLinear, default_weight_loader

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


class LayerNorm(nn.Module):
    """LayerNorm, parameters named as in HF checkpoints (weight, and bias unless ``bias=False``:
    ModernBERT's norms have none)."""

    def __init__(self, hidden_size: int, eps: float, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(hidden_size), requires_grad=False) if bias else None
        for p in (self.weight, self.bias):
            if p is not None:
                p.weight_loader = lambda param, w, shard_id=None: default_weight_loader(param, w)  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


class BertEmbeddings(nn.Module):
    def __init__(self, config: Any, position_offset: int = 0) -> None:
        super().__init__()
        # RoBERTa numbers positions from padding_idx + 1 (its position_offset); BERT from 0.
        self.position_offset = position_offset
        self.word_embeddings = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = VocabEmbedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = VocabEmbedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        # No token types: every prompt is one segment (type 0), as sentence-transformers feeds
        # a single text; a text pair's second segment is type 1.
        embeds = self.word_embeddings(input_ids) + self.position_embeddings(positions + self.position_offset)
        if token_type_ids is None:
            return self.LayerNorm(embeds + self.token_type_embeddings.weight[0])
        return self.LayerNorm(embeds + self.token_type_embeddings(token_type_ids))


class BertSelfAttention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.num_heads, _, self.head_dim = attention_shape(config)
        self.q_size = self.num_heads * self.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, self.num_heads, self.num_heads, True)
        self.attn = EncoderOnlyAttention(self.num_heads, self.head_dim, self.head_dim**-0.5)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size] * 3, dim=-1)
        return self.attn(q, k, v)


class BertAddNorm(nn.Module):
    """dense, then LayerNorm(that + residual): BERT's post-norm sub-layer output."""

    def __init__(self, input_size: int, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.dense = RowParallelLinear(input_size, hidden_size, True)
        self.LayerNorm = LayerNorm(hidden_size, eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertAddNorm(config.hidden_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden_states), hidden_states)


class BertIntermediate(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        act = getattr(config, "hidden_act", "gelu")
        if act not in _ACTIVATIONS:
            raise ConfigError(f"BERT hidden_act {act!r} is not supported (supported: {sorted(_ACTIVATIONS)})")
        self.dense = ReplicatedLinear(config.hidden_size, config.intermediate_size, True)
        self.act_fn = _ACTIVATIONS[act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_fn(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertAddNorm(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attn_out = self.attention(hidden_states)
        return self.output(self.intermediate(attn_out), attn_out)


class BertEncoder(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states)
        return hidden_states


class BertModel(nn.Module):
    supports_generation = False
    default_pooling_type = "CLS"
    # checkpoint name fragment -> (our fused parameter fragment, shard id)
    stacked_params_mapping = [(".query", ".qkv_proj", "q"), (".key", ".qkv_proj", "k"), (".value", ".qkv_proj", "v")]
    # Checkpoint parts a pooling encoder does not use: heads of other tasks, the NSP pooler,
    # and the position-id buffer some checkpoints save.
    _skipped_prefixes = ("cls.", "pooler.", "embeddings.position_ids")

    def __init__(self, config: Any, max_position: int | None = None, position_offset: int = 0) -> None:
        super().__init__()
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"BERT position_embedding_type {config.position_embedding_type!r} is not supported "
                              "(only absolute)")
        if max_position is not None and max_position + position_offset > config.max_position_embeddings:
            raise ConfigError(f"max_model_len {max_position} exceeds this model's max_position_embeddings "
                              f"({config.max_position_embeddings}"
                              + (f" less the position offset {position_offset}" if position_offset else "")
                              + "); lower max_model_len")
        self.config = config
        self.embeddings = BertEmbeddings(config, position_offset)
        self.encoder = BertEncoder(config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.embeddings(input_ids, positions, token_type_ids))

    def attention_layers(self) -> list[nn.Module]:
        """No paged attention: an encoder keeps no KV cache."""
        return []

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            name = name.removeprefix("bert.")
            if name.startswith(self._skipped_prefixes):
                continue
            target, shard_id = name, None
            for ckpt_part, fused_part, sid in self.stacked_params_mapping:
                if ckpt_part + "." in name:
                    target, shard_id = name.replace(ckpt_part + ".", fused_part + "."), sid
                    break
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in {type(self).__name__}")
            param.weight_loader(param, tensor, shard_id)
            loaded.add(target)
        return loaded


class RobertaModel(BertModel):
    """RobertaModel / XLMRobertaModel (e.g. bge-m3, multilingual-e5): BERT's modules, positions
    numbered from ``padding_idx + 1`` (HF create_position_ids_from_input_ids on unpadded text)."""

    _skipped_prefixes = BertModel._skipped_prefixes + ("lm_head.",)

    def __init__(self, config: Any, max_position: int | None = None) -> None:
        super().__init__(config, max_position, self.position_offset(config))

    @staticmethod
    def position_offset(config: Any) -> int:
        # (also read by the engine: that many fewer tokens fit in max_position_embeddings)
        return int(config.pad_token_id) + 1

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights((name.removeprefix("roberta."), tensor) for name, tensor in weights)
