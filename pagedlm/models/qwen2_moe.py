"""Qwen2-MoE: Qwen2 attention (QKV bias per ``qkv_bias``), sparse MoE blocks (softmax, top-k,
renormalised only with ``norm_topk_prob``) plus a shared expert scaled by a sigmoid gate;
layers in ``mlp_only_layers`` or off the ``decoder_sparse_step`` grid have a dense MLP."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.layers.activation import SiluAndMul
from pagedlm.layers.fused_moe import FusedMoE
from pagedlm.layers.linear import MergedColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from pagedlm.layers.quantization.base import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention
from pagedlm.models.mixtral import MoEDecoderLayer, MoEForCausalLM


class Qwen2MoeMLP(nn.Module):
    """A SwiGLU MLP of a given width (dense MoE-model layers, shared experts); ``bias`` on its
    three projections (ERNIE 4.5's ``use_bias``)."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False,
                 quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, bias,
                                                       quant_config=quant_config, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias, quant_config=quant_config,
                                           prefix=f"{prefix}.down_proj")
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class Qwen2MoeSparseMoeBlock(nn.Module):
    """The router and the shared expert's gate stay unquantized (as quantized Qwen MoE
    checkpoints keep them); the shared expert takes ``quant_config``."""

    def __init__(self, config: Any, shared_expert: bool, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        self.gate = ReplicatedLinear(config.hidden_size, config.num_experts)
        self.experts = FusedMoE(config.num_experts, config.num_experts_per_tok, config.hidden_size,
                                config.moe_intermediate_size, renormalize=bool(config.norm_topk_prob))
        self.shared_expert: Qwen2MoeMLP | None = None
        if shared_expert:
            self.shared_expert = Qwen2MoeMLP(config.hidden_size, config.shared_expert_intermediate_size,
                                             quant_config=quant_config, prefix=f"{prefix}.shared_expert")
            self.shared_expert_gate = ReplicatedLinear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.experts(hidden_states, self.gate(hidden_states))
        if self.shared_expert is not None:
            shared = self.shared_expert(hidden_states)
            out = out + F.sigmoid(self.shared_expert_gate(hidden_states)) * shared
        return out


def check_moe_config(config: Any) -> None:
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {config.hidden_act!r} is not supported for MoE experts (only silu)")
    if getattr(config, "use_sliding_window", False):
        raise ValueError("use_sliding_window (per-layer windows up to max_window_layers) is not supported for Qwen MoE")


def qwen_moe_mlp(config: Any, layer_idx: int, shared_expert: bool, quant_config: QuantizationConfig | None,
                 prefix: str) -> nn.Module:
    """A Qwen MoE layer's feed-forward block: sparse (with or without a shared expert) or dense."""
    if is_sparse_layer(config, layer_idx):
        return Qwen2MoeSparseMoeBlock(config, shared_expert, quant_config, prefix)
    return Qwen2MoeMLP(config.hidden_size, config.intermediate_size, quant_config=quant_config, prefix=prefix)


def is_sparse_layer(config: Any, layer_idx: int) -> bool:
    return (layer_idx not in (getattr(config, "mlp_only_layers", None) or [])
            and config.num_experts > 0 and (layer_idx + 1) % config.decoder_sparse_step == 0)


class Qwen2MoeForCausalLM(MoEForCausalLM):
    expert_names = ("gate_proj", "down_proj", "up_proj")
    supports_quantization = True  # attention, dense and shared-expert MLPs quantized; routed experts dequantized

    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding,
                   quant_config: QuantizationConfig | None = None) -> nn.Module:
        check_moe_config(config)
        prefix = f"model.layers.{layer_idx}"
        attn = LlamaAttention(config, rotary_emb, qkv_bias=bool(getattr(config, "qkv_bias", True)), qk_norm=False,
                              layer=layer_idx, quant_config=quant_config, prefix=f"{prefix}.self_attn")
        mlp = qwen_moe_mlp(config, layer_idx, True, quant_config, f"{prefix}.mlp")
        return MoEDecoderLayer(config, attn, mlp, "mlp")

    def num_experts(self) -> int:
        return self.config.num_experts
