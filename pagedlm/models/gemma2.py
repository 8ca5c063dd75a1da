"""Gemma 2: GeGLU MLP, (1 + w) RMSNorms before and after attention and the MLP, embeddings
scaled by sqrt(hidden_size), query_pre_attn_scalar, attention and final logit soft-capping,
and layers alternating sliding-window / global attention (``layer_types``).

Every layer keeps the full context in its KV blocks; a sliding layer only masks what lies
outside its window (memory is sized as for global attention)."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pagedlm.config import attention_shape
from pagedlm.layers.activation import GeluAndMul, gelu_approximation
from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import VocabEmbedding
from pagedlm.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedlm.layers.norm import RMSNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.causal_lm import CausalLMWrapper
from pagedlm.models.llama import rope_settings
from pagedlm.models.utils import LLAMA_STACKED_PARAMS, load_params


def soft_cap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """cap * tanh(x / cap); identity when cap is None."""
    return x if not cap else torch.tanh(x / cap) * cap


def layer_sliding_windows(config: Any) -> list[int | None]:
    """Each layer's sliding window (None = global) from ``layer_types``."""
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    unknown = set(layer_types) - {"sliding_attention", "full_attention"}
    if unknown:
        raise ValueError(f"layer types {sorted(unknown)} are not supported")
    return [config.sliding_window if t == "sliding_attention" else None for t in layer_types]


def check_causal(config: Any) -> None:
    if getattr(config, "use_bidirectional_attention", False):
        raise ValueError("use_bidirectional_attention (encoder-style Gemma) is not supported")


class Gemma2MLP(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        act = getattr(config, "hidden_activation", None) or config.hidden_act
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2,
                                                       quant_config=quant_config, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, quant_config=quant_config,
                                           prefix=f"{prefix}.down_proj")
        self.act_fn = GeluAndMul(gelu_approximation(act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class Gemma2Attention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, sliding_window: int | None,
                 softcap: float | None, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = attention_shape(config)
        bias = bool(getattr(config, "attention_bias", False))
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, bias,
                                          quant_config=quant_config, prefix=f"{prefix}.qkv_proj")
        # This tensor-parallel rank's widths of q and of k / v.
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        self.o_proj = RowParallelLinear(self.num_heads * self.head_dim, config.hidden_size, bias,
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")
        self.rotary_emb = rotary_emb
        scale = config.query_pre_attn_scalar**-0.5
        self.attn = Attention(self.num_heads, self.head_dim, self.num_kv_heads, scale, sliding_window, softcap)

    def project_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project_qkv(hidden_states)
        return self.o_proj(self.attn(q, k, v, positions, self.rotary_emb))  # RoPE with the cache write


class Gemma2DecoderLayer(nn.Module):
    def __init__(self, config: Any, self_attn: nn.Module, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        self.self_attn = self_attn
        self.mlp = Gemma2MLP(config, quant_config, f"{prefix}.mlp")
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps, unit_offset=True)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps, unit_offset=True)
        self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, eps, unit_offset=True)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps, unit_offset=True)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.post_attention_layernorm(self.self_attn(positions, hidden_states))
        hidden_states, residual = self.pre_feedforward_layernorm(hidden_states, residual)
        hidden_states = self.post_feedforward_layernorm(self.mlp(hidden_states))
        return hidden_states, residual


class Gemma2Model(nn.Module):
    def __init__(self, config: Any, max_position: int, quant_config: QuantizationConfig | None = None,
                 prefix: str = "model") -> None:
        super().__init__()
        check_causal(config)
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        # HF multiplies by sqrt(hidden) rounded to the weight dtype
        self.register_buffer("normalizer", torch.tensor(config.hidden_size**0.5), persistent=False)
        _, _, head_dim = attention_shape(config)
        base, rope_type, params, original_max = rope_settings(config)
        rotary_emb = RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                                     config.max_position_embeddings)
        softcap = getattr(config, "attn_logit_softcapping", None)
        self.layers = nn.ModuleList(
            Gemma2DecoderLayer(config, Gemma2Attention(config, rotary_emb, window, softcap, quant_config,
                                                       f"{prefix}.layers.{i}.self_attn"), quant_config,
                               f"{prefix}.layers.{i}")
            for i, window in enumerate(layer_sliding_windows(config))
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, unit_offset=True)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids) * self.normalizer.to(self.embed_tokens.weight.dtype)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class Gemma2ForCausalLM(CausalLMWrapper):
    model_cls: type[nn.Module] = Gemma2Model  # Gemma 3's text model in Gemma3ForCausalLM
    supports_quantization = True  # the attention and MLP projections (the LM head stays unquantized)

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        super().__init__(config, max_position, quant_config)
        self.final_logit_softcapping = getattr(config, "final_logit_softcapping", None)

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        return self.model_cls(config, max_position, self.quant_config)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return soft_cap(self.lm_head.compute_logits(hidden_states), self.final_logit_softcapping)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("lm_head.",) if self.tie_word_embeddings else ()
        return load_params(self, weights, LLAMA_STACKED_PARAMS, skip)
