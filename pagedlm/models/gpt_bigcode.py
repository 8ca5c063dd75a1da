"""GPT-BigCode (StarCoder 1, SantaCoder): GPT-2's block (learned absolute positions,
pre-LayerNorm, biases, GELU MLP, head tied to the embedding) with ordinary [out, in] linear
weights and multi-query attention (``multi_query``: one K/V head shared by all query heads).

The fused ``c_attn`` holds [q | k | v] with multi-query, and per-head [q | k | v] blocks
without it (transformers views it as [heads, 3 * head_dim]); either is split at load into
q, k and v shards of the fused projection, so tensor-parallel ranks take their query heads
(the single K/V head is replicated). A quantized checkpoint's c_attn tensors (GPTQ / AWQ
StarCoder exports) split the same way along the output dim their parameter declares, in
packed units where the format packs it; a tensor without one (GPTQ's g_idx) goes whole to
every shard."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from pagedlm.config import ConfigError
from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import VocabParallelEmbedding
from pagedlm.layers.linear import QKVParallelLinear, RowParallelLinear
from pagedlm.layers.norm import LayerNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.quantization.base import QuantizationError
from pagedlm.models.causal_lm import CausalLMWrapper
from pagedlm.models.gpt2 import GPT2Block
from pagedlm.models.utils import fused_parts, load_shards, per_head_parts


class GPTBigCodeAttention(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        hidden = config.hidden_size
        num_heads = config.num_attention_heads
        self.head_dim = hidden // num_heads
        num_kv_heads = 1 if config.multi_query else num_heads
        self.c_attn = QKVParallelLinear(hidden, self.head_dim, num_heads, num_kv_heads, bias=True,
                                        quant_config=quant_config, prefix=f"{prefix}.c_attn")
        self.q_size, self.kv_size = self.c_attn.q_size, self.c_attn.kv_size
        self.c_proj = RowParallelLinear(hidden, hidden, bias=True, quant_config=quant_config,
                                        prefix=f"{prefix}.c_proj")
        scale = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        self.attn = Attention(num_heads, self.head_dim, num_kv_heads, scale)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return self.c_proj(self.attn(q, k, v))


class GPTBigCodeModel(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None,
                 prefix: str = "transformer") -> None:
        super().__init__()
        self.wte = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.wpe = VocabParallelEmbedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList(GPT2Block(config, GPTBigCodeAttention(config, quant_config, f"{prefix}.h.{i}.attn"),
                                         quant_config, f"{prefix}.h.{i}")
                               for i in range(config.num_hidden_layers))
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            hidden_states = block(hidden_states)
        return self.ln_f(hidden_states)


def c_attn_parts(rows: torch.Tensor, pack: int, config: Any, name: str) -> list[torch.Tensor]:
    """c_attn's rows (in units of ``pack`` outputs) as q, k and v: contiguous with multi-query,
    per head without it."""
    head_dim = config.hidden_size // config.num_attention_heads
    if not config.multi_query:
        return per_head_parts(rows, config.num_attention_heads, 3, name)
    if head_dim % pack:
        raise QuantizationError(f"{name}: the K / V head ({head_dim} outputs) is not whole {pack}-output words")
    return list(rows.split([config.hidden_size // pack, head_dim // pack, head_dim // pack]))


def split_c_attn(weights: Iterable[tuple[str, torch.Tensor]], config: Any,
                 params: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor, Any]]:
    """(name, tensor, shard id): c_attn's tensors split into q, k and v along their parameter's
    output dim (``fused_parts``); old checkpoints' causal-mask buffers dropped."""
    for name, tensor in weights:
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if ".attn.c_attn." not in name:
            yield name, tensor, None
            continue
        cut = lambda rows, pack, name=name: c_attn_parts(rows, pack, config, name)  # noqa: E731
        for shard, piece in fused_parts(tensor, params.get(name), "qkv", cut):
            yield name, piece, shard


class GPTBigCodeForCausalLM(CausalLMWrapper):
    body_name = "transformer"
    embedding_name = "wte"
    layers_name = "h"
    attention_name = "attn.attn"

    supports_quantization = True  # every projection but the LM head

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        if getattr(config, "add_cross_attention", False):
            raise ConfigError("GPT-BigCode with cross-attention (add_cross_attention) is not supported")
        if max_position is not None and max_position > config.max_position_embeddings:
            raise ConfigError(f"max_model_len {max_position} exceeds GPT-BigCode's {config.max_position_embeddings} "
                              "learned positions")
        num_kv_heads = 1 if config.multi_query else config.num_attention_heads
        if getattr(config, "num_key_value_heads", num_kv_heads) != num_kv_heads:
            # The KV cache is sized from num_key_value_heads: it must say what multi_query does.
            raise ConfigError(f"GPT-BigCode config has num_key_value_heads {config.num_key_value_heads} but "
                              f"multi_query={config.multi_query} means {num_kv_heads} KV heads")
        super().__init__(config, max_position, quant_config)

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        return GPTBigCodeModel(config, self.quant_config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if self.tie_word_embeddings:
            weights = ((n, t) for n, t in weights if not n.startswith("lm_head."))
        params = dict(self.named_parameters(remove_duplicate=False))
        return load_shards(self, split_c_attn(weights, self.config, params))
