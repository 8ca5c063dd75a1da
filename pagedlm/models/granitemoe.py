"""GraniteMoe (``GraniteMoeForCausalLM``, ibm-granite/granite-3.0-1b-a400m) and
GraniteMoeShared (``GraniteMoeSharedForCausalLM``): Granite's attention and multipliers
(embedding, residual, attention scale, logits divided by ``logits_scaling``) with a sparse
MoE block (``block_sparse_moe``): top-k of the router logits, softmax over those k (the same
as Mixtral's softmax, top-k, renormalised), every expert in one 3-D tensor
(``input_linear`` [E, 2I, H], gate rows then up; ``output_linear`` [E, H, I]).
GraniteMoeShared adds a dense SwiGLU ``shared_mlp`` beside the experts (its ``input_linear``
[2S, H] split into gate and up at load, along each tensor's output dim: ``utils.fused_parts``).
A quantized checkpoint quantizes the attention and the shared MLP (the experts' 3-D tensors
are no linear layers to the quantizers, and stay float)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from pagedlm.layers.fused_moe import FusedMoE
from pagedlm.layers.linear import ReplicatedLinear
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention, PreNormDecoderLayer
from pagedlm.models.mixtral import MoEForCausalLM
from pagedlm.models.qwen2_moe import Qwen2MoeMLP, check_moe_config
from pagedlm.models.utils import fused_parts


class GraniteMoeRouter(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.layer = ReplicatedLinear(config.hidden_size, config.num_local_experts)  # router.layer.weight

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layer(hidden_states)


class GraniteMoeMoE(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.router = GraniteMoeRouter(config)
        self.experts = FusedMoE(config.num_local_experts, config.num_experts_per_tok, config.hidden_size,
                                config.intermediate_size, renormalize=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.experts(hidden_states, self.router(hidden_states))


class GraniteMoeDecoderLayer(PreNormDecoderLayer):
    """Granite's layer with the MoE block; with ``shared_intermediate_size`` a shared MLP whose
    output adds to the experts' (before the residual multiplier)."""

    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer_idx: int,
                 quant_config: QuantizationConfig | None = None) -> None:
        prefix = f"model.layers.{layer_idx}"
        attn = LlamaAttention(config, rotary_emb, qkv_bias=bool(getattr(config, "attention_bias", False)),
                              qk_norm=False, layer=layer_idx, quant_config=quant_config, prefix=f"{prefix}.self_attn")
        super().__init__(config, attn, GraniteMoeMoE(config), "block_sparse_moe")
        shared = int(getattr(config, "shared_intermediate_size", 0) or 0)
        self.shared_mlp = (Qwen2MoeMLP(config.hidden_size, shared, quant_config=quant_config,
                                       prefix=f"{prefix}.shared_mlp") if shared else None)

    def feed_forward(self, ffn: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        out = ffn(hidden_states)
        return out if self.shared_mlp is None else out + self.shared_mlp(hidden_states)


def split_shared_input_linear(weights: Iterable[tuple[str, torch.Tensor]], params: dict[str, torch.Tensor]
                              ) -> Iterator[tuple[str, torch.Tensor]]:
    """``shared_mlp.input_linear`` [2S, H] -> ``gate_proj`` / ``up_proj`` along each tensor's
    output dim (so a tensor-parallel rank takes its slice of each); ``output_linear`` ->
    ``down_proj``."""
    for name, tensor in weights:
        if ".shared_mlp.input_linear." in name:
            param = params.get(name.replace(".input_linear.", ".gate_up_proj."))
            for part, piece in fused_parts(tensor, param, ("gate_proj", "up_proj"), lambda rows, pack: rows.chunk(2)):
                yield name.replace(".input_linear.", f".{part}."), piece
        elif ".shared_mlp.output_linear." in name:
            yield name.replace(".output_linear.", ".down_proj."), tensor
        else:
            yield name, tensor


class GraniteMoeForCausalLM(MoEForCausalLM):
    extra_params_mapping = FusedMoE.stacked_expert_params_mapping(
        "block_sparse_moe.input_linear.weight", "block_sparse_moe.output_linear.weight", "block_sparse_moe.experts.")

    supports_quantization = True  # attention and shared MLP quantized; the experts' 3-D tensors stay float

    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding,
                   quant_config: QuantizationConfig | None = None) -> nn.Module:
        check_moe_config(config)
        return GraniteMoeDecoderLayer(config, rotary_emb, layer_idx, quant_config)

    def num_experts(self) -> int:
        return self.config.num_local_experts

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(split_shared_input_linear(weights, dict(self.named_parameters())))


GraniteMoeSharedForCausalLM = GraniteMoeForCausalLM  # the shared MLP follows shared_intermediate_size
