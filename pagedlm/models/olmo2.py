"""OLMo 2: the Llama weights with the norms moved after the blocks (each block's output is
normed before its residual add; no norm before attention or the MLP) and q / k RMSNorms over
the whole projection (all heads together), applied before RoPE.

The layers keep Llama's (hidden_states, residual) interface, the residual stream being their
sum, so the final norm's fused add, pipeline stages and Llama's loader work unchanged.

OLMo 3 adds sliding-window layers (``layer_types``) with their own RoPE settings per layer type
(``rope_parameters`` keyed by type, read by LlamaModel). EXAONE 4 keeps the post-norm layout
with per-head q / k RMSNorms, and where it has a sliding window its full-attention layers take
no position embedding (NoPE)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedlm.config import ConfigError, model_sliding_window
from pagedlm.layers.norm import RMSNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP, LlamaModel
from pagedlm.worker.distributed import get_tensor_model_parallel_world_size


class Olmo2Attention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, quant_config: QuantizationConfig | None,
                 prefix: str, layer: int) -> None:
        if get_tensor_model_parallel_world_size() > 1:
            # The q / k norms reduce over every head, which tensor-parallel ranks split.
            raise ConfigError("OLMo 2 does not support tensor_parallel_size > 1 yet; use tensor_parallel_size=1")
        super().__init__(config, rotary_emb, qk_norm=False, quant_config=quant_config, prefix=prefix, layer=layer)
        self.q_norm = RMSNorm(self.q_size, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.kv_size, config.rms_norm_eps)
        clip = getattr(config, "clip_qkv", None)  # OLMoE: q, k, v clamped after the norms
        self.clip_qkv = None if clip is None else float(clip)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.q_norm(q.contiguous()), self.k_norm(k.contiguous())
        if self.clip_qkv is not None:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        return self.o_proj(self.attn(q, k, v, positions, self.rotary_emb))  # RoPE with the cache write


class Olmo2DecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__()
        self.self_attn = self.make_attention(config, rotary_emb, quant_config, f"{prefix}.self_attn", layer)
        self.mlp = LlamaMLP(config, quant_config, f"{prefix}.mlp")
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def make_attention(self, config: Any, rotary_emb: RotaryEmbedding | None,
                       quant_config: QuantizationConfig | None, prefix: str, layer: int | None) -> nn.Module:
        return Olmo2Attention(config, rotary_emb, quant_config, prefix, layer)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's normed MLP output, the stream before it): their sum is the
        stream after the layer, which the next layer (or the final norm) adds up."""
        stream = hidden_states if residual is None else hidden_states + residual
        stream = stream + self.post_attention_layernorm(self.self_attn(positions, stream))
        return self.post_feedforward_layernorm(self.mlp(stream)), stream


class Olmo2Model(LlamaModel):
    layer_cls = Olmo2DecoderLayer


class Olmo2ForCausalLM(LlamaForCausalLM):
    model_cls = Olmo2Model


class Olmo3ForCausalLM(Olmo2ForCausalLM):
    """OLMo 3: OLMo 2 with sliding-window layers (``layer_types`` / ``sliding_window``, read by
    the attention) and RoPE settings per layer type (read by LlamaModel)."""


class Exaone4DecoderLayer(Olmo2DecoderLayer):
    def make_attention(self, config: Any, rotary_emb: RotaryEmbedding | None,
                       quant_config: QuantizationConfig | None, prefix: str, layer: int | None) -> nn.Module:
        return LlamaAttention(config, rotary_emb, qkv_bias=False, qk_norm=True, quant_config=quant_config,
                              prefix=prefix, layer=layer, o_bias=False)


class Exaone4Model(LlamaModel):
    layer_cls = Exaone4DecoderLayer

    def layer_rotary(self, config: Any, layer: int, rotary_emb: Any) -> RotaryEmbedding | None:
        # With a sliding window only the sliding layers use RoPE; without one, every layer does.
        if model_sliding_window(config) is not None and config.layer_types[layer] != "sliding_attention":
            return None
        return super().layer_rotary(config, layer, rotary_emb)


class Exaone4ForCausalLM(LlamaForCausalLM):
    model_cls = Exaone4Model
