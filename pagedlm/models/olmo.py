"""OLMo (1) (``OlmoForCausalLM``, e.g. OLMo-1B-hf / OLMo-7B-hf): the Llama layout with
LayerNorms that have no weight or bias (eps 1e-5, in float32, as transformers) in place of
the RMSNorms, and ``clip_qkv`` clamping q / k / v to [-clip, clip] before RoPE.

The norm keeps RMSNorm's fused residual interface (``norm(x, residual)`` -> (normed,
x + residual)), so Llama's layers, model and loader work unchanged."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP, LlamaModel, PreNormDecoderLayer
from pagedlm.models.pipeline import PPMissingLayer


class OlmoLayerNorm(nn.Module):
    """LayerNorm without parameters; ``residual`` given: normalises x + residual and returns
    (normed, x + residual), as the fused RMSNorm does."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> Any:
        if residual is not None:
            x = x + residual
        out = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)
        return out if residual is None else (out, x)


class OlmoAttention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, quant_config: QuantizationConfig | None,
                 prefix: str, layer: int | None) -> None:
        super().__init__(config, rotary_emb, quant_config=quant_config, prefix=prefix, layer=layer)
        clip = getattr(config, "clip_qkv", None)
        self.clip_qkv = None if clip is None else float(clip)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(hidden_states)
        if self.clip_qkv is not None:
            qkv = qkv.clamp(-self.clip_qkv, self.clip_qkv)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return self.o_proj(self.attn(q, k, v, positions, self.rotary_emb))


class OlmoDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__(config, OlmoAttention(config, rotary_emb, quant_config, f"{prefix}.self_attn", layer),
                         LlamaMLP(config, quant_config, f"{prefix}.mlp"))
        self.input_layernorm = OlmoLayerNorm()
        self.post_attention_layernorm = OlmoLayerNorm()


class OlmoModel(LlamaModel):
    layer_cls = OlmoDecoderLayer

    def __init__(self, config: Any, max_position: int, quant_config: QuantizationConfig | None = None,
                 prefix: str = "model") -> None:
        super().__init__(config, max_position, quant_config, prefix)
        if not isinstance(self.norm, PPMissingLayer):
            self.norm = OlmoLayerNorm()


class OlmoForCausalLM(LlamaForCausalLM):
    model_cls = OlmoModel
    # The parameter-free norms emit no 8-bit activation codes: an 8-bit layer quantizes its own
    # input (codes_for). LoRA on OLMo 1 is not tested.
    supports_quantization = True
    supports_lora = False
