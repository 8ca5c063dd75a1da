"""ERNIE 4.5 dense (``Ernie4_5ForCausalLM``, e.g. ERNIE-4.5-0.3B): the Llama layout with
RoPE rotating adjacent pairs (GPT-J style, as GLM) over each whole head, and ``use_bias``
putting a bias on every projection (q / k / v / o and gate / up / down)."""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedlm.config import attention_shape
from pagedlm.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import (LlamaAttention, LlamaForCausalLM, LlamaMLP, LlamaModel, PreNormDecoderLayer,
                                  gated_activation, rope_settings)


class Ernie4_5Attention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, quant_config: QuantizationConfig | None,
                 prefix: str, layer: int | None) -> None:
        bias = bool(getattr(config, "use_bias", False))
        super().__init__(config, rotary_emb, qkv_bias=bias, quant_config=quant_config, prefix=prefix, layer=layer)
        self.o_proj = RowParallelLinear(self.num_heads * self.head_dim, config.hidden_size, bias,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")


class Ernie4_5MLP(LlamaMLP):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        nn.Module.__init__(self)
        bias = bool(getattr(config, "use_bias", False))
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2, bias,
                                                       quant_config=quant_config, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")
        self.act_fn = gated_activation(getattr(config, "hidden_act", "silu"))


class Ernie4_5DecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__(config, Ernie4_5Attention(config, rotary_emb, quant_config, f"{prefix}.self_attn", layer),
                         Ernie4_5MLP(config, quant_config, f"{prefix}.mlp"))


class Ernie4_5Model(LlamaModel):
    layer_cls = Ernie4_5DecoderLayer

    def make_rotary_embedding(self, config: Any, max_position: int) -> RotaryEmbedding:
        _, _, head_dim = attention_shape(config)
        base, rope_type, params, original_max = rope_settings(config)
        return RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                               config.max_position_embeddings, is_neox_style=False)


class Ernie4_5ForCausalLM(LlamaForCausalLM):
    model_cls = Ernie4_5Model
