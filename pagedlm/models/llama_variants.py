"""Llama-layout decoders that differ from Llama in one or two places, each a small subclass:

- Apertus: per-head q / k RMSNorms, an ungated MLP with the xIELU activation (its parameters
  are checkpoint tensors), and the norms named ``attention_layernorm`` /
  ``feedforward_layernorm``.
- Arcee (AFM): an ungated MLP (up -> relu2 -> down).
- Helium: RoPE on adjacent pairs (GPT-J style) and an o_proj without bias.
- HunYuan dense (v1): per-head q / k RMSNorms (``query_layernorm`` / ``key_layernorm``)
  applied after RoPE, and the fixed-alpha NTK RoPE (``rope_scaling`` dynamic with ``alpha``,
  handled by the rotary layer).

Seed-OSS needs no class of its own: its o_proj bias (``attention_out_bias``) is read by
LlamaAttention."""

from __future__ import annotations

from typing import Any

from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import (
    LlamaAttention,
    LlamaForCausalLM,
    LlamaMLP,
    LlamaModel,
    PreNormDecoderLayer,
    UngatedMLP,
)

# The fused q/k/v only: the ungated MLP loads up_proj / down_proj by name.
QKV_STACKED_PARAMS = [
    (".q_proj", ".qkv_proj", "q"),
    (".k_proj", ".qkv_proj", "k"),
    (".v_proj", ".qkv_proj", "v"),
]


class ApertusDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__(config, LlamaAttention(config, rotary_emb, qk_norm=True, quant_config=quant_config,
                                                prefix=f"{prefix}.self_attn", layer=layer),
                         UngatedMLP(config, quant_config, f"{prefix}.mlp"))


class ApertusModel(LlamaModel):
    layer_cls = ApertusDecoderLayer


class ApertusForCausalLM(LlamaForCausalLM):
    model_cls = ApertusModel
    supports_lora = False  # the LoRA wrappers expect the fused gate_up_proj
    stacked_params_mapping = QKV_STACKED_PARAMS
    checkpoint_renames = [(".attention_layernorm.", ".input_layernorm."),
                          (".feedforward_layernorm.", ".post_attention_layernorm.")]


class ArceeDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__(config, LlamaAttention(config, rotary_emb, quant_config=quant_config,
                                                prefix=f"{prefix}.self_attn", layer=layer),
                         UngatedMLP(config, quant_config, f"{prefix}.mlp"))


class ArceeModel(LlamaModel):
    layer_cls = ArceeDecoderLayer


class ArceeForCausalLM(LlamaForCausalLM):
    model_cls = ArceeModel
    supports_lora = False
    stacked_params_mapping = QKV_STACKED_PARAMS


class HeliumDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__(config, LlamaAttention(config, rotary_emb, quant_config=quant_config,
                                                prefix=f"{prefix}.self_attn", layer=layer, o_bias=False),
                         LlamaMLP(config, quant_config, f"{prefix}.mlp"))


class HeliumModel(LlamaModel):
    layer_cls = HeliumDecoderLayer
    rope_is_neox_style = False


class HeliumForCausalLM(LlamaForCausalLM):
    model_cls = HeliumModel


class HunYuanDenseDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__(config, LlamaAttention(config, rotary_emb, qk_norm=True, quant_config=quant_config,
                                                prefix=f"{prefix}.self_attn", layer=layer,
                                                qk_norm_after_rope=True),
                         LlamaMLP(config, quant_config, f"{prefix}.mlp"))


class HunYuanDenseModel(LlamaModel):
    layer_cls = HunYuanDenseDecoderLayer


class HunYuanDenseV1ForCausalLM(LlamaForCausalLM):
    model_cls = HunYuanDenseModel
    checkpoint_renames = [(".self_attn.query_layernorm.", ".self_attn.q_norm."),
                          (".self_attn.key_layernorm.", ".self_attn.k_norm.")]
