"""GLM-4 (``GlmForCausalLM``, THUDM/glm-4-9b) and GLM-4-0414 (``Glm4ForCausalLM``): the
Llama layout with q / k / v biases (``attention_bias``) but a bias-free o_proj, the MLP's
gate and up stored fused (``gate_up_proj``, split at load as Phi-3's), and RoPE rotating
adjacent pairs (GPT-J style) on the first ``partial_rotary_factor`` (default 0.5) of each
head. GLM-4-0414 adds norms after attention and after the MLP (``post_self_attn_layernorm``,
``post_mlp_layernorm``), applied to each block's output before its residual add.

The layers keep Llama's (hidden_states, residual) interface, so the fused norm adds,
pipeline stages and Llama's loader work unchanged."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pagedlm.config import ConfigError, attention_shape
from pagedlm.layers.linear import RowParallelLinear
from pagedlm.layers.norm import RMSNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.gpt_neox import partial_rotary_embedding
from pagedlm.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP, LlamaModel, PreNormDecoderLayer
from pagedlm.models.phi import partial_rotary_dim
from pagedlm.models.phi3 import split_fused_for


class GlmAttention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, quant_config: QuantizationConfig | None,
                 prefix: str, layer: int | None) -> None:
        super().__init__(config, rotary_emb, qkv_bias=bool(getattr(config, "attention_bias", True)),
                         quant_config=quant_config, prefix=prefix, layer=layer)
        self.o_proj = RowParallelLinear(self.num_heads * self.head_dim, config.hidden_size, False,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")


class GlmDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__(config, GlmAttention(config, rotary_emb, quant_config, f"{prefix}.self_attn", layer),
                         LlamaMLP(config, quant_config, f"{prefix}.mlp"))


class Glm4DecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__()
        self.self_attn = GlmAttention(config, rotary_emb, quant_config, f"{prefix}.self_attn", layer)
        self.mlp = LlamaMLP(config, quant_config, f"{prefix}.mlp")
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.post_self_attn_layernorm = RMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.post_mlp_layernorm = RMSNorm(config.hidden_size, eps)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's normed MLP output, the stream before it): their sum is the
        stream after the layer, which the next layer's (or the final) norm adds up."""
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.post_self_attn_layernorm(self.self_attn(positions, hidden_states))
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.post_mlp_layernorm(self.mlp(hidden_states)), residual


class GlmModel(LlamaModel):
    layer_cls = GlmDecoderLayer

    def make_rotary_embedding(self, config: Any, max_position: int) -> RotaryEmbedding:
        _, _, head_dim = attention_shape(config)
        return partial_rotary_embedding(config, head_dim, max_position, is_neox_style=False,
                                        rotary_dim=partial_rotary_dim(config, head_dim, 0.5))


class Glm4Model(GlmModel):
    layer_cls = Glm4DecoderLayer


class GlmForCausalLM(LlamaForCausalLM):
    model_cls: type[LlamaModel] = GlmModel
    # gate_up is fused in the checkpoints (split per part, quantized tensors too: phi3.split_fused);
    # PEFT adapters on the fused gate_up_proj are not supported by the LoRA layers (as Phi-3).
    supports_quantization = True
    supports_lora = False

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ConfigError(f"GLM hidden_act {config.hidden_act!r} is not supported (only silu)")
        super().__init__(config, max_position, quant_config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(split_fused_for(self, weights))


class Glm4ForCausalLM(GlmForCausalLM):
    model_cls = Glm4Model
