"""PhiMoE (``PhimoeForCausalLM``, microsoft/Phi-3.5-MoE-instruct): Mixtral's layout and
checkpoint names with LayerNorms (weight and bias) in place of the RMSNorms, biases on q / k
/ v / o (``attention_bias``) and on the LM head (``lm_head_bias``), LongRoPE whose cos/sin
are scaled by ``short_mscale`` / ``long_mscale``, and sparsemixer routing: the best expert
weighted by a softmax over the experts within a relative ``router_jitter_noise`` window of
it, then the best of the rest weighted the same way (top-2 only; see
``reference.sparsemixer_top2``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedlm.config import attention_shape
from pagedlm.layers.norm import LayerNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention, rope_settings
from pagedlm.models.mixtral import MixtralSparseMoeBlock, MoEDecoderLayer, MoEForCausalLM


class PhimoeForCausalLM(MoEForCausalLM):
    supports_quantization = True  # attention quantized; a quantized checkpoint's experts dequantized at load

    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding,
                   quant_config: QuantizationConfig | None = None) -> nn.Module:
        attn = LlamaAttention(config, rotary_emb, qkv_bias=bool(getattr(config, "attention_bias", False)),
                              qk_norm=False, layer=layer_idx, quant_config=quant_config,
                              prefix=f"model.layers.{layer_idx}.self_attn")
        moe = MixtralSparseMoeBlock(config, renormalize=False, scoring_func="sparsemixer",
                                    jitter_eps=float(getattr(config, "router_jitter_noise", 0.01)))
        return MoEDecoderLayer(config, attn, moe, "block_sparse_moe",
                               make_norm=lambda: LayerNorm(config.hidden_size, config.rms_norm_eps))

    @staticmethod
    def make_norm(config: Any) -> nn.Module:
        return LayerNorm(config.hidden_size, config.rms_norm_eps)

    @staticmethod
    def make_rotary_embedding(config: Any, max_position: int) -> RotaryEmbedding | None:
        _, _, head_dim = attention_shape(config)
        base, rope_type, params, original_max = rope_settings(config)
        if rope_type in ("longrope", "su") and "attention_factor" not in params:
            # PhiMoE's own cos/sin scale, chosen as the long / short factors are.
            key = "long_mscale" if max_position > original_max else "short_mscale"
            if params.get(key) is not None:
                params = {**params, "attention_factor": float(params[key])}
        return RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                               config.max_position_embeddings)

    @staticmethod
    def has_lm_head_bias(config: Any) -> bool:
        return bool(getattr(config, "lm_head_bias", False))

    def num_experts(self) -> int:
        return self.config.num_local_experts
