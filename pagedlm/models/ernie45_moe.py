"""ERNIE 4.5 MoE (``Ernie4_5_MoeForCausalLM``, baidu/ERNIE-4.5-21B-A3B-PT): ERNIE 4.5's
attention (GPT-J-style RoPE over whole heads, ``use_bias`` on every projection) with sparse
MoE blocks on the layers from ``moe_layer_start_index`` to ``moe_layer_end_index`` every
``moe_layer_interval`` (dense MLPs elsewhere): softmax over the experts, the top-k chosen on
those scores plus ``moe_statics.e_score_correction_bias``, their unbiased scores always
renormalised, and ``moe_num_shared_experts`` shared experts (one MLP of that many times
``moe_intermediate_size``) added unscaled."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedlm.config import attention_shape
from pagedlm.layers.fused_moe import FusedMoE
from pagedlm.layers.linear import ReplicatedLinear
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.ernie45 import Ernie4_5Attention, Ernie4_5MLP
from pagedlm.models.llama import rope_settings
from pagedlm.models.mixtral import MoEDecoderLayer, MoEForCausalLM, plain_loader
from pagedlm.models.qwen2_moe import Qwen2MoeMLP, check_moe_config


class Ernie4_5_MoeStatics(nn.Module):
    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.e_score_correction_bias = nn.Parameter(torch.zeros(1, num_experts), requires_grad=False)
        self.e_score_correction_bias.weight_loader = plain_loader  # type: ignore[attr-defined]


class Ernie4_5_MoeSparseMoeBlock(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        num_experts = config.moe_num_experts
        self.gate = ReplicatedLinear(config.hidden_size, num_experts)
        self.moe_statics = Ernie4_5_MoeStatics(num_experts)
        self.experts = FusedMoE(num_experts, config.moe_k, config.hidden_size, config.moe_intermediate_size,
                                renormalize=True)
        shared = int(getattr(config, "moe_num_shared_experts", 0) or 0)
        self.shared_experts = (Qwen2MoeMLP(config.hidden_size, config.moe_intermediate_size * shared,
                                           bool(getattr(config, "use_bias", False)), quant_config,
                                           f"{prefix}.shared_experts") if shared else None)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.experts(hidden_states, self.gate(hidden_states), self.moe_statics.e_score_correction_bias)
        return out if self.shared_experts is None else out + self.shared_experts(hidden_states)


def is_moe_layer(config: Any, layer_idx: int) -> bool:
    start = int(getattr(config, "moe_layer_start_index", 0))
    end = int(getattr(config, "moe_layer_end_index", -1))
    end = config.num_hidden_layers - 1 if end < 0 else end
    interval = int(getattr(config, "moe_layer_interval", 1))
    return (layer_idx + 1) % interval == 0 and start <= layer_idx <= end


class Ernie4_5_MoeForCausalLM(MoEForCausalLM):
    expert_names = ("gate_proj", "down_proj", "up_proj")
    supports_quantization = True  # attention, dense and shared-expert MLPs quantized; routed experts dequantized

    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding,
                   quant_config: QuantizationConfig | None = None) -> nn.Module:
        check_moe_config(config)
        prefix = f"model.layers.{layer_idx}"
        attn = Ernie4_5Attention(config, rotary_emb, quant_config, f"{prefix}.self_attn", layer_idx)
        mlp = (Ernie4_5_MoeSparseMoeBlock(config, quant_config, f"{prefix}.mlp") if is_moe_layer(config, layer_idx)
               else Ernie4_5MLP(config, quant_config, f"{prefix}.mlp"))
        return MoEDecoderLayer(config, attn, mlp, "mlp")

    @staticmethod
    def make_rotary_embedding(config: Any, max_position: int) -> RotaryEmbedding | None:
        _, _, head_dim = attention_shape(config)
        base, rope_type, params, original_max = rope_settings(config)
        return RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                               config.max_position_embeddings, is_neox_style=False)

    @staticmethod
    def has_lm_head_bias(config: Any) -> bool:
        return bool(getattr(config, "use_bias", False))

    def num_experts(self) -> int:
        return self.config.moe_num_experts
