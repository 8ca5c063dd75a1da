"""Qwen3-MoE: Qwen3 attention (per-head q/k RMSNorm, bias per ``attention_bias``) and sparse
MoE blocks without a shared expert (softmax, top-k, renormalised with ``norm_topk_prob``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedlm.layers.quantization.base import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention
from pagedlm.models.mixtral import MoEDecoderLayer
from pagedlm.models.qwen2_moe import Qwen2MoeForCausalLM, check_moe_config, qwen_moe_mlp


class Qwen3MoeForCausalLM(Qwen2MoeForCausalLM):
    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding,
                   quant_config: QuantizationConfig | None = None) -> nn.Module:
        check_moe_config(config)
        prefix = f"model.layers.{layer_idx}"
        attn = LlamaAttention(config, rotary_emb, qkv_bias=bool(getattr(config, "attention_bias", False)),
                              qk_norm=True, layer=layer_idx, quant_config=quant_config, prefix=f"{prefix}.self_attn")
        return MoEDecoderLayer(config, attn, qwen_moe_mlp(config, layer_idx, False, quant_config, f"{prefix}.mlp"),
                               "mlp")
