"""OLMoE (``OlmoeForCausalLM``, allenai/OLMoE-1B-7B): Llama's pre-norm layer with OLMo 2's
q / k RMSNorms over the whole projection (all heads together, before RoPE), ``clip_qkv``
clamping q / k / v after those norms, and a sparse MoE block in every layer (softmax over
the experts, top-k, renormalised only with ``norm_topk_prob``; no shared expert)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedlm.layers.fused_moe import FusedMoE
from pagedlm.layers.linear import ReplicatedLinear
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.mixtral import MoEDecoderLayer, MoEForCausalLM
from pagedlm.models.olmo2 import Olmo2Attention
from pagedlm.models.qwen2_moe import check_moe_config


class OlmoeAttention(Olmo2Attention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, layer: int,
                 quant_config: QuantizationConfig | None = None) -> None:
        super().__init__(config, rotary_emb, quant_config, f"model.layers.{layer}.self_attn", layer)


class OlmoeSparseMoeBlock(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.gate = ReplicatedLinear(config.hidden_size, config.num_experts)
        self.experts = FusedMoE(config.num_experts, config.num_experts_per_tok, config.hidden_size,
                                config.intermediate_size, renormalize=bool(getattr(config, "norm_topk_prob", False)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.experts(hidden_states, self.gate(hidden_states))


class OlmoeForCausalLM(MoEForCausalLM):
    expert_names = ("gate_proj", "down_proj", "up_proj")
    supports_quantization = True  # attention quantized; a quantized checkpoint's experts dequantized at load

    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding,
                   quant_config: QuantizationConfig | None = None) -> nn.Module:
        check_moe_config(config)
        return MoEDecoderLayer(config, OlmoeAttention(config, rotary_emb, layer_idx, quant_config),
                               OlmoeSparseMoeBlock(config), "mlp")

    def num_experts(self) -> int:
        return self.config.num_experts
