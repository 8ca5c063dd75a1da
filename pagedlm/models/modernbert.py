"""ModernBERT encoders (ModernBertModel, e.g. gte-modernbert-base, modernbert-embed; and
ModernBertForSequenceClassification, e.g. gte-reranker-modernbert-base) for pooling.

Reads like transformers' ``modeling_modernbert``: token embeddings + LayerNorm (no position
embeddings), pre-norm layers (the first layer has no attention norm), a fused ``Wqkv``, RoPE
with its own base for global (``full_attention``) and local (``sliding_attention``) layers,
GeGLU MLP (``Wi`` holds input and gate), LayerNorms without bias (``norm_bias``), a final norm.
Local layers attend only within ``sliding_window`` (``local_attention // 2``) tokens on either
side: an exact band mask in the encoder attention. Sequences are unpadded (the step's tokens
are packed, each sequence attends within itself). Weight names are the checkpoint's.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pagedlm.config import ConfigError
from pagedlm.layers.activation import encoder_activation
from pagedlm.layers.embedding import VocabEmbedding
from pagedlm.layers.encoder_attention import EncoderOnlyAttention
from pagedlm.layers.linear import ReplicatedLinear
from pagedlm.models.bert import LayerNorm
from pagedlm.models.encoder_rope import apply_rope, rope_cos_sin, rope_theta
from pagedlm.models.utils import load_params



def _layer_types(config: Any) -> list[str]:
    types = getattr(config, "layer_types", None)
    if types is None:  # older configs: every global_attn_every_n_layers-th layer is global
        every = int(getattr(config, "global_attn_every_n_layers", 3))
        types = ["sliding_attention" if i % every else "full_attention" for i in range(config.num_hidden_layers)]
    return list(types)


class ModernBertAttention(nn.Module):
    def __init__(self, config: Any, layer_type: str) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // self.num_heads
        bias = bool(getattr(config, "attention_bias", False))
        self.Wqkv = ReplicatedLinear(config.hidden_size, 3 * config.hidden_size, bias)
        self.Wo = ReplicatedLinear(config.hidden_size, config.hidden_size, bias)
        window = int(config.sliding_window) if layer_type == "sliding_attention" else None
        self.attn = EncoderOnlyAttention(self.num_heads, self.head_dim, self.head_dim**-0.5, window)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self.Wqkv(x).chunk(3, dim=-1)
        q, k = apply_rope(q, cos, sin, self.num_heads), apply_rope(k, cos, sin, self.num_heads)
        return self.Wo(self.attn(q.contiguous(), k.contiguous(), v.contiguous()))


class ModernBertMLP(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        bias = bool(getattr(config, "mlp_bias", False))
        self.Wi = ReplicatedLinear(config.hidden_size, 2 * config.intermediate_size, bias)
        self.Wo = ReplicatedLinear(config.intermediate_size, config.hidden_size, bias)
        self.act = encoder_activation(getattr(config, "hidden_activation", "gelu"), "ModernBERT hidden_activation")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.act(inp) * gate)


class ModernBertEncoderLayer(nn.Module):
    def __init__(self, config: Any, layer_idx: int, layer_type: str) -> None:
        super().__init__()
        eps, bias = config.norm_eps, bool(config.norm_bias)
        self.layer_type = layer_type
        self.attn_norm = LayerNorm(config.hidden_size, eps, bias) if layer_idx else nn.Identity()
        self.attn = ModernBertAttention(config, layer_type)
        self.mlp_norm = LayerNorm(config.hidden_size, eps, bias)
        self.mlp = ModernBertMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class ModernBertEmbeddings(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.tok_embeddings = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.norm = LayerNorm(config.hidden_size, config.norm_eps, bool(config.norm_bias))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.tok_embeddings(input_ids))


class ModernBertModel(nn.Module):
    supports_generation = False
    default_pooling_type = "CLS"
    # Checkpoint parts a pooling encoder does not use (a masked-LM checkpoint's head).
    _skipped_prefixes = ("head.", "decoder.")

    def __init__(self, config: Any, max_position: int | None = None) -> None:
        super().__init__()
        if max_position is not None and max_position > config.max_position_embeddings:
            raise ConfigError(f"max_model_len {max_position} exceeds this model's max_position_embeddings "
                              f"({config.max_position_embeddings}); lower max_model_len")
        if config.hidden_size % config.num_attention_heads:
            raise ConfigError(f"ModernBERT hidden_size {config.hidden_size} is not a multiple of "
                              f"num_attention_heads {config.num_attention_heads}")
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        layer_types = _layer_types(config)
        self.thetas = {t: rope_theta(config, t) for t in set(layer_types)}
        self.embeddings = ModernBertEmbeddings(config)
        self.layers = nn.ModuleList(ModernBertEncoderLayer(config, i, t) for i, t in enumerate(layer_types))
        self.final_norm = LayerNorm(config.hidden_size, config.norm_eps, bool(config.norm_bias))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        rope = {t: rope_cos_sin(positions, self.head_dim, theta) for t, theta in self.thetas.items()}
        hidden = self.embeddings(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, *rope[layer.layer_type])
        return self.final_norm(hidden)

    def attention_layers(self) -> list[nn.Module]:
        """No paged attention: an encoder keeps no KV cache."""
        return []

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return load_params(self, ((name.removeprefix("model."), tensor) for name, tensor in weights),
                           skip_prefixes=self._skipped_prefixes)


class ModernBertPredictionHead(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.dense = ReplicatedLinear(config.hidden_size, config.hidden_size, bool(config.classifier_bias))
        self.act = encoder_activation(getattr(config, "classifier_activation", "gelu"),
                                      "ModernBERT classifier_activation")
        self.norm = LayerNorm(config.hidden_size, config.norm_eps, bool(config.norm_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.act(self.dense(x)))


class ModernBertForSequenceClassification(nn.Module):
    """The encoder, then (in the pooler) the CLS token's or the mean hidden state, as the
    config's ``classifier_pooling`` says, through ``head`` (dense, activation, norm) and the
    ``classifier`` linear."""

    supports_generation = False
    is_sequence_classifier = True
    default_pooling_type = "CLS"

    @staticmethod
    def classifier_pooling_type(config: Any) -> str:
        pooling = getattr(config, "classifier_pooling", "cls")
        if pooling not in ("cls", "mean"):
            raise ConfigError(f"ModernBERT classifier_pooling {pooling!r} is not supported (cls or mean)")
        return pooling.upper() if pooling == "mean" else "CLS"

    def __init__(self, config: Any, max_position: int | None = None) -> None:
        super().__init__()
        self.config = config
        self.model = ModernBertModel(config, max_position)
        self.head = ModernBertPredictionHead(config)
        self.classifier = ReplicatedLinear(config.hidden_size, config.num_labels, True)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, hidden] pooled hidden states -> [B, num_labels] logits."""
        return self.classifier(self.head(pooled))

    def attention_layers(self) -> list[nn.Module]:
        return []

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        head = {n: p for n, p in self.named_parameters() if n.startswith(("head.", "classifier."))}
        loaded: set[str] = set()

        def encoder_weights() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name in head:
                    head[name].weight_loader(head[name], tensor, None)
                    loaded.add(name)
                elif name.startswith("model."):
                    yield name, tensor
                else:
                    raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in "
                                     f"{type(self).__name__}")

        loaded |= {f"model.{name}" for name in self.model.load_weights(encoder_weights())}
        return loaded
