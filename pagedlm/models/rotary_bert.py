"""BERT-shaped encoders with rotary positions and a gated MLP, for pooling: NomicBertModel
(nomic-embed-text-v1 / v1.5) and GteModel / NewModel (Alibaba's gte-*-v1.5 and
gte-multilingual-base).

Both read like transformers' ``modeling_nomic_bert`` / ``modeling_gte`` (ports of the models'
own remote code): word (+ token-type) embeddings and a LayerNorm, no position embeddings;
post-norm layers (attention, add, LayerNorm; MLP, add, LayerNorm); a fused qkv projection with
plain RoPE; a gated MLP. NomicBERT: no biases (unless its config turns them on), SwiGLU
``fc2(fc11(x) * silu(fc12(x)))``. GTE: qkv and output biases, ``up_gate_proj`` holding up
then gate, ``down_proj(act(gate) * up)``. Parameter names are the published checkpoints'
(``emb_ln``, ``encoder.layers.N.attn.Wqkv`` ...; ``encoder.layer.N.attention.qkv_proj`` ...),
which transformers also writes. The published configs (nomic's ``n_embd`` keys, gte's
``model_type: new``) are read without remote code by ``encoder_configs.py``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

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

def _activation(config: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    return encoder_activation(getattr(config, "hidden_act", "gelu"), f"{type(config).__name__} hidden_act")


class _Attention(nn.Module):
    def __init__(self, config: Any, qkv_bias: bool, out_bias: bool) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        inner = self.num_heads * self.head_dim
        self.qkv = ReplicatedLinear(config.hidden_size, 3 * inner, qkv_bias)
        self.out = ReplicatedLinear(inner, config.hidden_size, out_bias)
        self.attn = EncoderOnlyAttention(self.num_heads, self.head_dim, self.head_dim**-0.5)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = apply_rope(q, cos, sin, self.num_heads), apply_rope(k, cos, sin, self.num_heads)
        return self.out(self.attn(q.contiguous(), k.contiguous(), v.contiguous()))


class _RotaryBertModel(nn.Module):
    """The shared encoder; subclasses name the modules as their checkpoints do."""

    supports_generation = False
    default_pooling_type = "CLS"
    _skipped_prefixes: tuple[str, ...] = ()
    _prefix = ""  # the encoder's prefix in checkpoints of the models with heads

    def __init__(self, config: Any, max_position: int | None = None) -> None:
        super().__init__()
        if max_position is not None and max_position > config.max_position_embeddings:
            raise ConfigError(f"max_model_len {max_position} exceeds this model's max_position_embeddings "
                              f"({config.max_position_embeddings}); lower max_model_len")
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.theta = rope_theta(config)
        self.word_embeddings = VocabEmbedding(config.vocab_size, config.hidden_size)
        types = int(getattr(config, "type_vocab_size", 0) or 0)
        self.token_type_embeddings = VocabEmbedding(types, config.hidden_size) if types else None
        self.emb_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.layers = nn.ModuleList(self._make_layer(config) for _ in range(config.num_hidden_layers))

    def _make_layer(self, config: Any) -> nn.Module:
        raise NotImplementedError

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.word_embeddings(input_ids)
        if self.token_type_embeddings is not None:  # one segment: type 0
            hidden = hidden + self.token_type_embeddings.weight[0]
        hidden = self.emb_norm(hidden)
        cos, sin = rope_cos_sin(positions, self.head_dim, self.theta)
        for layer in self.layers:
            hidden = layer.norm1(hidden + layer.attn(hidden, cos, sin))
            hidden = layer.norm2(hidden + layer.mlp(hidden))
        return hidden

    def attention_layers(self) -> list[nn.Module]:
        """No paged attention: an encoder keeps no KV cache."""
        return []

    def checkpoint_name_to_param(self, name: str) -> str:
        raise NotImplementedError

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        names = ((name.removeprefix(self._prefix), tensor) for name, tensor in weights)
        return load_params(self, ((self.checkpoint_name_to_param(name), tensor) for name, tensor in names
                                  if not name.startswith(self._skipped_prefixes)))


class _Layer(nn.Module):
    def __init__(self, attn: nn.Module, mlp: nn.Module, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.attn = attn
        self.mlp = mlp
        self.norm1 = LayerNorm(hidden_size, eps)
        self.norm2 = LayerNorm(hidden_size, eps)


class _SwiGLU(nn.Module):
    """NomicBERT's gated MLP: fc2(fc11(x) * act(fc12(x)))."""

    def __init__(self, config: Any, fc1_bias: bool, fc2_bias: bool) -> None:
        super().__init__()
        self.fc11 = ReplicatedLinear(config.hidden_size, config.intermediate_size, fc1_bias)
        self.fc12 = ReplicatedLinear(config.hidden_size, config.intermediate_size, fc1_bias)
        self.fc2 = ReplicatedLinear(config.intermediate_size, config.hidden_size, fc2_bias)
        self.act = _activation(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc11(x) * self.act(self.fc12(x)))


class NomicBertModel(_RotaryBertModel):
    # checkpoint fragment -> parameter fragment
    _renames = (("emb_ln.", "emb_norm."), ("embeddings.", ""), ("encoder.layers.", "layers."),
                (".attn.Wqkv.", ".attn.qkv."), (".attn.out_proj.", ".attn.out."))
    _skipped_prefixes = ("pooler.", "lm_head.", "cls.")
    _prefix = "bert."

    def _make_layer(self, config: Any) -> nn.Module:
        qkv_bias = bool(getattr(config, "qkv_proj_bias", False))
        mlp = _SwiGLU(config, bool(getattr(config, "mlp_fc1_bias", False)), bool(getattr(config, "mlp_fc2_bias", False)))
        return _Layer(_Attention(config, qkv_bias, qkv_bias), mlp, config.hidden_size, config.layer_norm_eps)

    def checkpoint_name_to_param(self, name: str) -> str:
        for old, new in self._renames:
            name = name.replace(old, new, 1) if old in name else name
        return name


class _GteMLP(nn.Module):
    """GTE's gated MLP: up_gate_proj holds [up; gate]; down_proj(act(gate) * up)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.up_gate_proj = ReplicatedLinear(config.hidden_size, 2 * config.intermediate_size, False)
        self.down_proj = ReplicatedLinear(config.intermediate_size, config.hidden_size, True)
        self.act = _activation(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, gate = self.up_gate_proj(x).chunk(2, dim=-1)
        return self.down_proj(self.act(gate) * up)


class GteModel(_RotaryBertModel):
    """Also NewModel (the published gte checkpoints' architecture name)."""

    _renames = (("embeddings.LayerNorm.", "emb_norm."), ("embeddings.", ""), ("encoder.layer.", "layers."),
                (".attention.qkv_proj.", ".attn.qkv."), (".attention.o_proj.", ".attn.out."),
                (".attn_ln.", ".norm1."), (".mlp_ln.", ".norm2."))
    _skipped_prefixes = ("pooler.", "lm_head.", "classifier.", "embeddings.position_ids")
    _prefix = "new."

    def _make_layer(self, config: Any) -> nn.Module:
        return _Layer(_Attention(config, True, True), _GteMLP(config), config.hidden_size, config.layer_norm_eps)

    def checkpoint_name_to_param(self, name: str) -> str:
        for old, new in self._renames:
            name = name.replace(old, new, 1) if old in name else name
        return name
