"""Phi-1 / Phi-1.5 / Phi-2: one LayerNorm feeding attention and the GELU MLP in parallel
(x + attn(ln(x)) + mlp(ln(x))), q / k / v / dense / fc1 / fc2 all with biases, RoPE (halves,
neox style) on the first ``partial_rotary_factor`` of each head, optional per-head q / k
LayerNorms (``qk_layernorm``, one weight shared by all heads), a final LayerNorm and an
untied LM head with a bias.

q / k / v load into one fused projection by shard id, so tensor-parallel ranks take their
heads; the head's bias is kept whole and added to the gathered logits."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pagedlm.config import ConfigError, attention_shape
from pagedlm.layers.activation import Gelu, gelu_approximation
from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import VocabParallelEmbedding
from pagedlm.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear, default_weight_loader
from pagedlm.layers.norm import LayerNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.causal_lm import CausalLMWrapper
from pagedlm.models.gpt_neox import partial_rotary_embedding
from pagedlm.models.llama import rope_settings
from pagedlm.models.utils import LLAMA_STACKED_PARAMS, load_params


def partial_rotary_dim(config: Any, head_dim: int, default: float = 1.0) -> int:
    """head_dim times ``partial_rotary_factor``, read from rope_parameters (new configs) or
    the config itself (old ones)."""
    _, _, params, _ = rope_settings(config)
    factor = params.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", None))
    return int(head_dim * (default if factor is None else factor))


class PhiAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        num_heads, num_kv_heads, self.head_dim = attention_shape(config)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, num_heads, num_kv_heads, bias=True,
                                          quant_config=quant_config, prefix=f"{prefix}.qkv_proj")
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        self.dense = RowParallelLinear(num_heads * self.head_dim, config.hidden_size, bias=True,
                                       quant_config=quant_config, prefix=f"{prefix}.dense")
        self.qk_layernorm = bool(getattr(config, "qk_layernorm", False))
        if self.qk_layernorm:  # over each head's features, the same weights for every head
            self.q_layernorm = LayerNorm(self.head_dim, config.layer_norm_eps)
            self.k_layernorm = LayerNorm(self.head_dim, config.layer_norm_eps)
        self.rotary_emb = rotary_emb
        self.attn = Attention(num_heads, self.head_dim, num_kv_heads, self.head_dim**-0.5)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_layernorm:
            num_tokens = q.shape[0]
            q = self.q_layernorm(q.reshape(num_tokens, -1, self.head_dim)).view(num_tokens, self.q_size)
            k = self.k_layernorm(k.reshape(num_tokens, -1, self.head_dim)).view(num_tokens, self.kv_size)
        return self.dense(self.attn(q, k, v, positions, self.rotary_emb))


class PhiMLP(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        self.fc1 = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias=True,
                                        quant_config=quant_config, prefix=f"{prefix}.fc1")
        self.fc2 = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=True,
                                     quant_config=quant_config, prefix=f"{prefix}.fc2")
        self.act = Gelu(gelu_approximation(config.hidden_act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PhiDecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.self_attn = PhiAttention(config, rotary_emb, quant_config, f"{prefix}.self_attn")
        self.mlp = PhiMLP(config, quant_config, f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = self.input_layernorm(hidden_states)
        return hidden_states + self.self_attn(positions, normed) + self.mlp(normed)


class PhiModel(nn.Module):
    def __init__(self, config: Any, max_position: int, quant_config: QuantizationConfig | None = None,
                 prefix: str = "model") -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        _, _, head_dim = attention_shape(config)
        rotary_emb = partial_rotary_embedding(config, head_dim, max_position,
                                              rotary_dim=partial_rotary_dim(config, head_dim, 0.5))
        self.layers = nn.ModuleList(PhiDecoderLayer(config, rotary_emb, quant_config, f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.final_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden_states = layer(positions, hidden_states)
        return self.final_layernorm(hidden_states)


class PhiForCausalLM(CausalLMWrapper):
    tie_word_embeddings_default = False
    supports_quantization = True  # every projection but the LM head

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        try:
            gelu_approximation(getattr(config, "hidden_act", "gelu_new"))
        except ValueError as e:
            raise ConfigError(f"Phi hidden_act {config.hidden_act!r} is not supported (a GELU variant)") from e
        super().__init__(config, max_position, quant_config)
        # The head's bias over the whole vocabulary, added after the ranks' logits are gathered.
        self.lm_head_bias = nn.Parameter(torch.zeros(config.vocab_size), requires_grad=False)
        self.lm_head_bias.weight_loader = lambda p, w, shard_id=None: default_weight_loader(p, w)  # type: ignore[attr-defined]

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        return PhiModel(config, max_position, self.quant_config)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden_states) + self.lm_head_bias

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def renamed() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name == "lm_head.bias":
                    name = "lm_head_bias"
                elif self.tie_word_embeddings and name == "lm_head.weight":
                    continue
                yield name, tensor

        return load_params(self, renamed(), LLAMA_STACKED_PARAMS[:3])
