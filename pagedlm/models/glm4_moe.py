"""GLM-4.5 / GLM-4.6 (``Glm4MoeForCausalLM``, zai-org/GLM-4.5-Air): Llama's pre-norm layer
with q / k / v biases (``attention_bias``) but none on o_proj, optional per-head q / k
RMSNorms (``use_qk_norm``), RoPE on the first ``partial_rotary_factor`` (0.5) of each head
(halves rotated, neox style), dense MLPs on the first ``first_k_dense_replace`` layers and
DeepSeek-V3-style MoE blocks after them: sigmoid scores, the choice made on scores plus
``gate.e_score_correction_bias`` within the ``topk_group`` best of ``n_group`` groups (each
scored by the sum of its best two), the unbiased scores renormalised (``norm_topk_prob``) and
scaled by ``routed_scaling_factor``, plus ``n_shared_experts`` shared experts. The
multi-token-prediction layers of the checkpoints (``num_nextn_predict_layers``, past
``num_hidden_layers``) are not loaded."""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch
from torch import nn

from pagedlm.config import attention_shape
from pagedlm.layers.fused_moe import FusedMoE
from pagedlm.layers.linear import ReplicatedLinear
from pagedlm.layers.quantization.base import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.gpt_neox import partial_rotary_embedding
from pagedlm.models.llama import LlamaAttention
from pagedlm.models.mixtral import MoEDecoderLayer, MoEForCausalLM, plain_loader
from pagedlm.models.phi import partial_rotary_dim
from pagedlm.models.qwen2_moe import Qwen2MoeMLP, check_moe_config


class Glm4MoeAttention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer: int,
                 quant_config: QuantizationConfig | None = None) -> None:
        super().__init__(config, rotary_emb, qkv_bias=bool(getattr(config, "attention_bias", False)),
                         qk_norm=bool(getattr(config, "use_qk_norm", False)), layer=layer, o_bias=False,
                         quant_config=quant_config, prefix=f"model.layers.{layer}.self_attn")


class Glm4MoeRouter(ReplicatedLinear):
    """The router's logits, and the correction bias of its choice (``gate.e_score_correction_bias``)."""

    def __init__(self, hidden_size: int, num_experts: int) -> None:
        super().__init__(hidden_size, num_experts)
        self.e_score_correction_bias = nn.Parameter(torch.zeros(num_experts), requires_grad=False)
        self.e_score_correction_bias.weight_loader = plain_loader  # type: ignore[attr-defined]


class Glm4MoeMoE(nn.Module):
    def __init__(self, config: Any, scoring_func: str = "sigmoid", correction_bias: bool = True,
                 grouped: bool = True, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        """The defaults are GLM-4.5's (and DeepSeek-V3's) routing; DeepSeek-V2 scores with a
        softmax, has no correction bias, and limits the choice to groups only with its
        ``group_limited_greedy`` (``grouped``). ``quant_config`` reaches the shared experts (the
        router stays unquantized)."""
        super().__init__()
        num_experts = config.n_routed_experts
        self.gate = (Glm4MoeRouter(config.hidden_size, num_experts) if correction_bias
                     else ReplicatedLinear(config.hidden_size, num_experts))
        self.experts = FusedMoE(num_experts, config.num_experts_per_tok, config.hidden_size,
                                config.moe_intermediate_size, renormalize=bool(config.norm_topk_prob),
                                scoring_func=scoring_func,
                                num_expert_group=int(getattr(config, "n_group", 1) or 1) if grouped else None,
                                topk_group=int(getattr(config, "topk_group", 1) or 1),
                                routed_scaling_factor=float(getattr(config, "routed_scaling_factor", 1.0)))
        shared = int(getattr(config, "n_shared_experts", 0) or 0)
        self.shared_experts = (Qwen2MoeMLP(config.hidden_size, config.moe_intermediate_size * shared,
                                           quant_config=quant_config, prefix=f"{prefix}.shared_experts")
                               if shared else None)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        bias = getattr(self.gate, "e_score_correction_bias", None)
        out = self.experts(hidden_states, self.gate(hidden_states), bias)
        return out if self.shared_experts is None else out + self.shared_experts(hidden_states)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class Glm4MoeForCausalLM(MoEForCausalLM):
    expert_names = ("gate_proj", "down_proj", "up_proj")
    supports_quantization = True  # attention, dense and shared-expert MLPs quantized; routed experts dequantized

    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding,
                   quant_config: QuantizationConfig | None = None) -> nn.Module:
        check_moe_config(config)
        prefix = f"model.layers.{layer_idx}.mlp"
        if layer_idx >= int(getattr(config, "first_k_dense_replace", 0)):
            mlp: nn.Module = Glm4MoeMoE(config, quant_config=quant_config, prefix=prefix)
        else:
            mlp = Qwen2MoeMLP(config.hidden_size, config.intermediate_size, quant_config=quant_config, prefix=prefix)
        attn = Glm4MoeAttention(config, rotary_emb, layer_idx, quant_config)
        return MoEDecoderLayer(config, attn, mlp, "mlp")

    @staticmethod
    def make_rotary_embedding(config: Any, max_position: int) -> RotaryEmbedding | None:
        _, _, head_dim = attention_shape(config)
        return partial_rotary_embedding(config, head_dim, max_position,
                                        rotary_dim=partial_rotary_dim(config, head_dim, 0.5))

    def num_experts(self) -> int:
        return self.config.n_routed_experts

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        num_layers = self.config.num_hidden_layers

        def decoder_weights():
            for name, tensor in weights:
                m = _LAYER.match(name)
                if m is None or int(m.group(1)) < num_layers:  # MTP layers come after the decoder's
                    yield name, tensor

        return super().load_weights(decoder_weights())
