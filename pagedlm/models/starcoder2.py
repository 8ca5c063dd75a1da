"""StarCoder2: the Llama layout with LayerNorm (weight and bias) instead of RMSNorm, biases on
every projection (``use_bias``), a plain GELU MLP (``c_fc`` / ``c_proj``, no gate), GQA, an
optional sliding window on every layer and a head tied to the embedding by default.

q / k / v load into the fused qkv projection through Llama's stacked-parameter mapping, so
tensor-parallel ranks take their heads as for Llama."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pagedlm.config import ConfigError, attention_shape, layer_sliding_window
from pagedlm.layers.activation import Gelu, gelu_approximation
from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import VocabParallelEmbedding
from pagedlm.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedlm.layers.norm import LayerNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.causal_lm import CausalLMWrapper
from pagedlm.models.llama import rope_settings
from pagedlm.models.utils import LLAMA_STACKED_PARAMS, load_params


class Starcoder2Attention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer: int,
                 quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        num_heads, num_kv_heads, self.head_dim = attention_shape(config)
        bias = bool(config.use_bias)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, num_heads, num_kv_heads, bias,
                                          quant_config=quant_config, prefix=f"{prefix}.qkv_proj")
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        self.o_proj = RowParallelLinear(num_heads * self.head_dim, config.hidden_size, bias, quant_config=quant_config,
                                        prefix=f"{prefix}.o_proj")
        self.rotary_emb = rotary_emb
        self.attn = Attention(num_heads, self.head_dim, num_kv_heads, self.head_dim**-0.5,
                              layer_sliding_window(config, layer))

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return self.o_proj(self.attn(q, k, v, positions, self.rotary_emb))


class Starcoder2MLP(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        bias = bool(config.use_bias)
        self.c_fc = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias, quant_config=quant_config,
                                         prefix=f"{prefix}.c_fc")
        self.c_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias, quant_config=quant_config,
                                        prefix=f"{prefix}.c_proj")
        self.act = Gelu(gelu_approximation(config.hidden_act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Starcoder2DecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer: int,
                 quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, config.norm_epsilon)
        self.self_attn = Starcoder2Attention(config, rotary_emb, layer, quant_config, f"{prefix}.self_attn")
        self.post_attention_layernorm = LayerNorm(config.hidden_size, config.norm_epsilon)
        self.mlp = Starcoder2MLP(config, quant_config, f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(positions, self.input_layernorm(hidden_states))
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class Starcoder2Model(nn.Module):
    def __init__(self, config: Any, max_position: int, quant_config: QuantizationConfig | None = None,
                 prefix: str = "model") -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        _, _, head_dim = attention_shape(config)
        base, rope_type, params, original_max = rope_settings(config)
        rotary_emb = RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                                     config.max_position_embeddings)
        self.layers = nn.ModuleList(Starcoder2DecoderLayer(config, rotary_emb, i, quant_config, f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.norm = LayerNorm(config.hidden_size, config.norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden_states = layer(positions, hidden_states)
        return self.norm(hidden_states)


class Starcoder2ForCausalLM(CausalLMWrapper):
    supports_quantization = True  # every projection but the LM head

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        if config.hidden_act not in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
            raise ConfigError(f"StarCoder2 hidden_act {config.hidden_act!r} is not supported (GELU variants only)")
        super().__init__(config, max_position, quant_config)

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        return Starcoder2Model(config, max_position, self.quant_config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("lm_head.",) if self.tie_word_embeddings else ()
        return load_params(self, weights, LLAMA_STACKED_PARAMS[:3], skip_prefixes=skip)
