"""GPT-2: learned absolute positions, pre-LayerNorm blocks with biases, a fused c_attn
(q | k | v) projection, gelu_new MLP, and the LM head tied to the token embedding (as GPT-2
checkpoints have it; ``tie_word_embeddings: false`` loads a separate one).

The checkpoint's Conv1D weights are stored [in, out]; they are transposed at load into
ordinary [out, in] linear weights. Old checkpoints without the ``transformer.`` prefix and
with causal-mask buffers (``attn.bias``, ``attn.masked_bias``) load too."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from pagedlm.layers.activation import Gelu, gelu_approximation
from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import VocabEmbedding
from pagedlm.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedlm.layers.norm import LayerNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.models.causal_lm import CausalLMWrapper

_CONV1D = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")


class GPT2Attention(nn.Module):
    def __init__(self, config: Any, layer_idx: int) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.c_attn = QKVParallelLinear(hidden, self.head_dim, self.num_heads, self.num_heads, bias=True)
        self.c_proj = RowParallelLinear(hidden, hidden, bias=True)
        scale = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        # reorder_and_upcast_attn only upcasts: the attention op computes in float32 anyway.
        self.attn = Attention(self.num_heads, self.head_dim, self.num_heads, scale)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(hidden_states).chunk(3, dim=-1)
        return self.c_proj(self.attn(q, k, v))


class GPT2MLP(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        inner = config.n_inner or 4 * config.hidden_size
        self.c_fc = ColumnParallelLinear(config.hidden_size, inner, bias=True, quant_config=quant_config,
                                         prefix=f"{prefix}.c_fc")
        self.c_proj = RowParallelLinear(inner, config.hidden_size, bias=True, quant_config=quant_config,
                                        prefix=f"{prefix}.c_proj")
        self.act = Gelu(gelu_approximation(config.activation_function))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    """Pre-LayerNorm attention then the GELU MLP; ``attn`` is the family's attention
    (GPT-2's, or GPT-BigCode's multi-query one), called on the normed hidden states."""

    def __init__(self, config: Any, attn: nn.Module, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = LayerNorm(config.hidden_size, eps)
        self.attn = attn
        self.ln_2 = LayerNorm(config.hidden_size, eps)
        self.mlp = GPT2MLP(config, quant_config, f"{prefix}.mlp")

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.ln_1(hidden_states))
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class GPT2Model(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.wte = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.wpe = VocabEmbedding(config.max_position_embeddings, config.hidden_size)
        self.h = nn.ModuleList(GPT2Block(config, GPT2Attention(config, i)) for i in range(config.num_hidden_layers))
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            hidden_states = block(hidden_states)
        return self.ln_f(hidden_states)


def _checkpoint_tensors(weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor, Any]]:
    """(name, [out, in] tensor, shard id): adds the ``transformer.`` prefix old checkpoints
    lack, drops causal-mask buffers, transposes Conv1D weights, splits c_attn into q, k, v."""
    for name, tensor in weights:
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name
        if name.endswith(_CONV1D):
            tensor = tensor.t()
        if ".c_attn." in name:
            # q | k | v rows (bias entries) each go to their shard of the fused projection.
            for shard, piece in zip("qkv", tensor.chunk(3, dim=0)):
                yield name, piece, shard
        else:
            yield name, tensor, None


class GPT2LMHeadModel(CausalLMWrapper):
    body_name = "transformer"
    embedding_name = "wte"
    layers_name = "h"
    attention_name = "attn.attn"

    def __init__(self, config: Any, max_position: int | None = None) -> None:
        if getattr(config, "add_cross_attention", False):
            raise ValueError("GPT-2 with cross-attention (add_cross_attention) is not supported")
        if max_position is not None and max_position > config.max_position_embeddings:
            raise ValueError(f"max_model_len {max_position} exceeds GPT-2's {config.max_position_embeddings} "
                             "learned positions")
        super().__init__(config, max_position)

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        return GPT2Model(config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()
        for name, tensor, shard_id in _checkpoint_tensors(weights):
            if self.tie_word_embeddings and name.startswith("lm_head."):
                continue
            if name not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in GPT2LMHeadModel")
            params[name].weight_loader(params[name], tensor, shard_id)
            loaded.add(name)
        return loaded
