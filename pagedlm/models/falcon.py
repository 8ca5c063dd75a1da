"""Falcon (``FalconForCausalLM``): Falcon-7B (``multi_query``: one K/V head, attention and
MLP in parallel from one LayerNorm), Falcon-40B / 180B (``new_decoder_architecture``:
``num_kv_heads`` K/V groups, separate ``ln_attn`` / ``ln_mlp`` norms unless
``num_ln_in_parallel_attn`` is 1) and the original per-head layout (``multi_query`` off,
``parallel_attn`` on or off). RoPE over each whole head (neox style), a GELU MLP, biases
with ``bias``, a tied head by default. ALiBi checkpoints (``alibi``) are refused.

The fused ``query_key_value`` is split at load into q, k and v by the layout the config
implies ([group: its query heads | k | v] per K/V group; [query heads | k | v]; per head
[q | k | v]), each part loaded through the fused projection's loader with its shard id,
so tensor-parallel ranks take their heads. The K/V head count comes from
``pagedlm.config.falcon_kv_heads`` (through ``attention_shape``), which sizes the cache."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from pagedlm.config import ConfigError, attention_shape
from pagedlm.layers.activation import Gelu, gelu_approximation
from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import VocabParallelEmbedding
from pagedlm.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedlm.layers.norm import LayerNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.quantization.base import QuantizationError
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.causal_lm import CausalLMWrapper
from pagedlm.models.llama import rope_settings
from pagedlm.models.utils import fused_parts, load_shards


def _num_ln(config: Any) -> int:
    """LayerNorms per parallel block: 2 (ln_attn, ln_mlp) by default in the new architecture."""
    if not config.new_decoder_architecture:
        return 1
    return config.num_ln_in_parallel_attn or 2


class FalconAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        num_heads, num_kv_heads, head_dim = attention_shape(config)
        bias = bool(config.bias)
        self.query_key_value = QKVParallelLinear(config.hidden_size, head_dim, num_heads, num_kv_heads, bias,
                                                 quant_config=quant_config, prefix=f"{prefix}.query_key_value")
        self.q_size, self.kv_size = self.query_key_value.q_size, self.query_key_value.kv_size
        self.dense = RowParallelLinear(num_heads * head_dim, config.hidden_size, bias, quant_config=quant_config,
                                       prefix=f"{prefix}.dense")
        self.rotary_emb = rotary_emb
        self.attn = Attention(num_heads, head_dim, num_kv_heads, head_dim**-0.5)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query_key_value(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return self.dense(self.attn(q, k, v, positions, self.rotary_emb))


class FalconMLP(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        inner = config.ffn_hidden_size or 4 * config.hidden_size
        self.dense_h_to_4h = ColumnParallelLinear(config.hidden_size, inner, bias=bool(config.bias),
                                                  quant_config=quant_config, prefix=f"{prefix}.dense_h_to_4h")
        self.act = Gelu(gelu_approximation(config.activation))
        self.dense_4h_to_h = RowParallelLinear(inner, config.hidden_size, bias=bool(config.bias),
                                               quant_config=quant_config, prefix=f"{prefix}.dense_4h_to_h")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class FalconDecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.self_attention = FalconAttention(config, rotary_emb, quant_config, f"{prefix}.self_attention")
        self.mlp = FalconMLP(config, quant_config, f"{prefix}.mlp")
        self.parallel = bool(config.new_decoder_architecture or config.parallel_attn)
        self.two_norms = _num_ln(config) == 2
        if self.two_norms:
            self.ln_attn = LayerNorm(config.hidden_size, eps)
            self.ln_mlp = LayerNorm(config.hidden_size, eps)
        else:
            self.input_layernorm = LayerNorm(config.hidden_size, eps)
        if not self.parallel:
            self.post_attention_layernorm = LayerNorm(config.hidden_size, eps)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.two_norms:
            attn_in, mlp_in = self.ln_attn(hidden_states), self.ln_mlp(hidden_states)
        else:
            attn_in = mlp_in = self.input_layernorm(hidden_states)
        attn_out = self.self_attention(positions, attn_in)
        if self.parallel:
            return hidden_states + attn_out + self.mlp(mlp_in)
        hidden_states = hidden_states + attn_out
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class FalconModel(nn.Module):
    def __init__(self, config: Any, max_position: int, quant_config: QuantizationConfig | None = None,
                 prefix: str = "transformer") -> None:
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        _, _, head_dim = attention_shape(config)
        base, rope_type, params, original_max = rope_settings(config)
        rotary_emb = RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                                     config.max_position_embeddings)
        self.h = nn.ModuleList(FalconDecoderLayer(config, rotary_emb, quant_config, f"{prefix}.h.{i}")
                               for i in range(config.num_hidden_layers))
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.word_embeddings(input_ids)
        for layer in self.h:
            hidden_states = layer(positions, hidden_states)
        return self.ln_f(hidden_states)


def check_falcon_config(config: Any) -> None:
    if getattr(config, "alibi", False):
        raise ConfigError("Falcon with alibi=True (ALiBi position biases, e.g. Falcon-RW) is not supported; "
                          "only rotary Falcon checkpoints are")
    if config.new_decoder_architecture and not config.parallel_attn:
        raise ConfigError("Falcon new_decoder_architecture with parallel_attn=False is not supported "
                          "(transformers does not run it either)")
    if config.num_ln_in_parallel_attn not in (None, 1, 2) or (
            not config.new_decoder_architecture and config.num_ln_in_parallel_attn == 2):
        raise ConfigError(f"Falcon num_ln_in_parallel_attn={config.num_ln_in_parallel_attn!r} is not supported "
                          "(1, or 2 with new_decoder_architecture)")
    num_heads, num_kv_heads, _ = attention_shape(config)
    if num_heads % num_kv_heads:
        raise ConfigError(f"Falcon num_kv_heads {num_kv_heads} must divide num_attention_heads {num_heads}")
    try:
        gelu_approximation(config.activation)
    except ValueError as e:
        raise ConfigError(f"Falcon activation {config.activation!r} is not supported (a GELU variant)") from e


class FalconForCausalLM(CausalLMWrapper):
    body_name = "transformer"
    embedding_name = "word_embeddings"
    layers_name = "h"
    attention_name = "self_attention.attn"
    supports_quantization = True  # every projection but the LM head

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        check_falcon_config(config)
        super().__init__(config, max_position, quant_config)

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        return FalconModel(config, max_position, self.quant_config)

    def _split_qkv(self, tensor: torch.Tensor, pack: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The checkpoint's fused rows (weight [rows, hidden], bias [rows], or a quantized
        tensor with its output dim first, in units of ``pack`` outputs) -> q, k, v."""
        num_heads, num_kv_heads, head_dim = attention_shape(self.config)
        if head_dim % pack:
            raise QuantizationError(f"Falcon query_key_value: a head ({head_dim} outputs) is not whole "
                                    f"{pack}-output words")
        head_dim //= pack
        rest = tensor.shape[1:]
        if self.config.new_decoder_architecture:  # [group: its query heads | k | v]
            groups = tensor.reshape(num_kv_heads, num_heads // num_kv_heads + 2, head_dim, *rest)
            q, k, v = groups[:, :-2], groups[:, -2], groups[:, -1]
        elif self.config.multi_query:  # [query heads | k | v]
            heads = tensor.reshape(num_heads + 2, head_dim, *rest)
            q, k, v = heads[:-2], heads[-2], heads[-1]
        else:  # per head [q | k | v]
            heads = tensor.reshape(num_heads, 3, head_dim, *rest)
            q, k, v = heads[:, 0], heads[:, 1], heads[:, 2]
        return tuple(x.reshape(-1, *rest) for x in (q, k, v))  # type: ignore[return-value]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters(remove_duplicate=False))

        def triples() -> Iterator[tuple[str, torch.Tensor, Any]]:
            for name, tensor in weights:
                if self.tie_word_embeddings and name == "lm_head.weight":
                    continue
                if ".query_key_value." in name:  # along its output dim (utils.fused_parts)
                    for shard_id, part in fused_parts(tensor, params.get(name), "qkv", self._split_qkv):
                        yield name, part, shard_id
                else:
                    yield name, tensor, None

        return load_shards(self, triples())
