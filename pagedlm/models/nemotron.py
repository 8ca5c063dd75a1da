"""Nemotron (Nemotron-3 / Minitron): the Llama layout with LayerNorms that have a bias and
multiply by (1 + weight) ("LayerNorm1P", ``norm_eps``), RoPE on the first
``partial_rotary_factor`` of each head, and an ungated MLP (up -> relu2 -> down)."""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedlm.layers.norm import LayerNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention, LlamaForCausalLM, LlamaModel, PreNormDecoderLayer, UngatedMLP
from pagedlm.models.llama_variants import QKV_STACKED_PARAMS


def layer_norm_1p(config: Any) -> LayerNorm:
    return LayerNorm(config.hidden_size, config.norm_eps, unit_offset=True)


class NemotronDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__(config, LlamaAttention(config, rotary_emb, quant_config=quant_config,
                                                prefix=f"{prefix}.self_attn", layer=layer),
                         UngatedMLP(config, quant_config, f"{prefix}.mlp"), make_norm=lambda: layer_norm_1p(config))


class NemotronModel(LlamaModel):
    layer_cls = NemotronDecoderLayer

    def make_norm(self, config: Any) -> nn.Module:
        return layer_norm_1p(config)


class NemotronForCausalLM(LlamaForCausalLM):
    model_cls = NemotronModel
    supports_quantization = True  # an 8-bit layer after a LayerNorm quantizes its own input (codes_for)
    supports_lora = False  # the LoRA wrappers expect the fused gate_up_proj
    stacked_params_mapping = QKV_STACKED_PARAMS
