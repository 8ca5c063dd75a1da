"""GPT-NeoX (Pythia, GPT-NeoX-20B): LayerNorm blocks with a parallel residual
(``use_parallel_residual``: x + attn(ln1(x)) + mlp(ln2(x))) or the sequential one, RoPE on
the first ``partial_rotary_factor`` (``rotary_pct``) of each head, a plain GELU MLP with
biases, and an untied ``embed_out`` head.

The checkpoint's fused ``query_key_value`` is laid out per head, [head 0: q | k | v, head 1:
q | k | v, ...] (transformers views it as [heads, 3 * head_dim]); it is split at load into q,
k and v, each loaded through the fused projection's loader with its shard id, so a
tensor-parallel rank takes its heads of each part; a quantized checkpoint's tensors the same
way along their parameter's output dim (``utils.fused_parts``)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from pagedlm.config import ConfigError
from pagedlm.layers.activation import Gelu, gelu_approximation
from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import VocabParallelEmbedding
from pagedlm.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedlm.layers.norm import LayerNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.causal_lm import CausalLMWrapper
from pagedlm.models.llama import rope_settings
from pagedlm.models.utils import fused_parts, load_shards, per_head_parts


def partial_rotary_embedding(config: Any, head_dim: int, max_position: int, is_neox_style: bool = True,
                             rotary_dim: int | None = None) -> RotaryEmbedding:
    """RoPE on ``rotary_dim`` features of each head (default: head_dim times the config's
    ``partial_rotary_factor``, older configs' ``rotary_pct``), the base from ``rope_theta``
    (older configs' ``rotary_emb_base``)."""
    base, rope_type, params, original_max = rope_settings(config)
    if "rope_theta" not in params and getattr(config, "rotary_emb_base", None) is not None:
        base = float(config.rotary_emb_base)
    if rotary_dim is None:
        factor = params.get("partial_rotary_factor", getattr(config, "rotary_pct", 1.0))
        rotary_dim = int(head_dim * factor)
    return RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                           config.max_position_embeddings, rotary_dim=rotary_dim, is_neox_style=is_neox_style)


class GPTNeoXAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        bias = getattr(config, "attention_bias", True)
        self.query_key_value = QKVParallelLinear(hidden, self.head_dim, self.num_heads, self.num_heads, bias,
                                                 quant_config=quant_config, prefix=f"{prefix}.query_key_value")
        self.q_size = self.query_key_value.q_size  # this rank's width of each of q, k, v
        self.dense = RowParallelLinear(hidden, hidden, bias, quant_config=quant_config, prefix=f"{prefix}.dense")
        self.rotary_emb = rotary_emb
        self.attn = Attention(self.num_heads, self.head_dim, self.num_heads, self.head_dim**-0.5)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.query_key_value(hidden_states).split(self.q_size, dim=-1)
        return self.dense(self.attn(q, k, v, positions, self.rotary_emb))


class GPTNeoXMLP(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        self.dense_h_to_4h = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias=True,
                                                  quant_config=quant_config, prefix=f"{prefix}.dense_h_to_4h")
        self.dense_4h_to_h = RowParallelLinear(config.intermediate_size, config.hidden_size, bias=True,
                                               quant_config=quant_config, prefix=f"{prefix}.dense_4h_to_h")
        self.act = Gelu(gelu_approximation(config.hidden_act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class GPTNeoXLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        self.use_parallel_residual = bool(config.use_parallel_residual)
        self.input_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        self.attention = GPTNeoXAttention(config, rotary_emb, quant_config, f"{prefix}.attention")
        self.mlp = GPTNeoXMLP(config, quant_config, f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        attn_output = self.attention(positions, self.input_layernorm(hidden_states))
        if self.use_parallel_residual:  # both branches read the layer's input
            return hidden_states + attn_output + self.mlp(self.post_attention_layernorm(hidden_states))
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class GPTNeoXModel(nn.Module):
    def __init__(self, config: Any, max_position: int, quant_config: QuantizationConfig | None = None,
                 prefix: str = "gpt_neox") -> None:
        super().__init__()
        self.embed_in = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        head_dim = config.hidden_size // config.num_attention_heads
        rotary_emb = partial_rotary_embedding(config, head_dim, max_position)
        self.layers = nn.ModuleList(GPTNeoXLayer(config, rotary_emb, quant_config, f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.final_layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.embed_in(input_ids)
        for layer in self.layers:
            hidden_states = layer(positions, hidden_states)
        return self.final_layer_norm(hidden_states)


def split_per_head_qkv(weights: Iterable[tuple[str, torch.Tensor]], num_heads: int,
                       params: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor, str | None]]:
    """(name, tensor, shard id): query_key_value's rows [heads, 3, head_dim] become the q, k
    and v shards (along each tensor's output dim, ``fused_parts``); the attention's mask and
    inv_freq buffers of old checkpoints are dropped."""
    for name, tensor in weights:
        if name.endswith((".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")):
            continue
        if ".query_key_value." in name:
            cut = lambda rows, pack, name=name: per_head_parts(rows, num_heads, 3, name)  # noqa: E731
            for shard, piece in fused_parts(tensor, params.get(name), "qkv", cut):
                yield name, piece, shard
        else:
            yield name, tensor, None


class GPTNeoXForCausalLM(CausalLMWrapper):
    body_name = "gpt_neox"
    embedding_name = "embed_in"
    attention_name = "attention.attn"
    head_name = "embed_out"
    tie_word_embeddings_default = False
    supports_quantization = True  # every projection but the LM head

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        if getattr(config, "hidden_act", "gelu") not in ("gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
            raise ConfigError(f"GPT-NeoX hidden_act {config.hidden_act!r} is not supported (GELU variants only)")
        super().__init__(config, max_position, quant_config)

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        return GPTNeoXModel(config, max_position, self.quant_config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if self.tie_word_embeddings:
            weights = ((n, t) for n, t in weights if not n.startswith("embed_out."))
        return load_shards(self, split_per_head_qkv(weights, self.config.num_attention_heads,
                                                    dict(self.named_parameters(remove_duplicate=False))))
