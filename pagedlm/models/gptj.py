"""GPT-J: one LayerNorm feeding attention and the GELU MLP in parallel (x + attn(ln(x)) +
mlp(ln(x))), bias-free q / k / v / out projections, RoPE on the first ``rotary_dim``
features of each head rotating adjacent pairs (base 10000, as transformers), and an LM head
with a bias.

q / k / v load into one fused projection by shard id, so tensor-parallel ranks take their
heads; the head's bias is kept whole and added to the gathered logits."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from pagedlm.config import ConfigError
from pagedlm.layers.activation import Gelu, gelu_approximation
from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import VocabParallelEmbedding
from pagedlm.layers.linear import ColumnParallelLinear, QKVParallelLinear, RowParallelLinear, default_weight_loader
from pagedlm.layers.norm import LayerNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.causal_lm import CausalLMWrapper
from pagedlm.models.utils import load_params

_QKV = [(".q_proj", ".qkv_proj", "q"), (".k_proj", ".qkv_proj", "k"), (".v_proj", ".qkv_proj", "v")]


class GPTJAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        hidden = config.hidden_size
        num_heads = config.num_attention_heads
        head_dim = hidden // num_heads
        self.qkv_proj = QKVParallelLinear(hidden, head_dim, num_heads, num_heads, bias=False, quant_config=quant_config,
                                          prefix=f"{prefix}.qkv_proj")
        self.q_size = self.qkv_proj.q_size
        self.out_proj = RowParallelLinear(hidden, hidden, bias=False, quant_config=quant_config,
                                          prefix=f"{prefix}.out_proj")
        self.rotary_emb = rotary_emb
        self.attn = Attention(num_heads, head_dim, num_heads, head_dim**-0.5)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split(self.q_size, dim=-1)
        return self.out_proj(self.attn(q, k, v, positions, self.rotary_emb))


class GPTJMLP(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        inner = config.n_inner or 4 * config.hidden_size
        self.fc_in = ColumnParallelLinear(config.hidden_size, inner, bias=True, quant_config=quant_config,
                                          prefix=f"{prefix}.fc_in")
        self.fc_out = RowParallelLinear(inner, config.hidden_size, bias=True, quant_config=quant_config,
                                        prefix=f"{prefix}.fc_out")
        self.act = Gelu(gelu_approximation(config.activation_function))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class GPTJBlock(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.hidden_size, config.layer_norm_epsilon)
        self.attn = GPTJAttention(config, rotary_emb, quant_config, f"{prefix}.attn")
        self.mlp = GPTJMLP(config, quant_config, f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = self.ln_1(hidden_states)
        return hidden_states + self.attn(positions, normed) + self.mlp(normed)


class GPTJModel(nn.Module):
    def __init__(self, config: Any, max_position: int, quant_config: QuantizationConfig | None = None,
                 prefix: str = "transformer") -> None:
        super().__init__()
        self.wte = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        head_dim = config.hidden_size // config.num_attention_heads
        rotary_emb = RotaryEmbedding(head_dim, max_position, 10000.0, rotary_dim=config.rotary_dim,
                                     is_neox_style=False)
        self.h = nn.ModuleList(GPTJBlock(config, rotary_emb, quant_config, f"{prefix}.h.{i}")
                               for i in range(config.num_hidden_layers))
        self.ln_f = LayerNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.wte(input_ids)
        for block in self.h:
            hidden_states = block(positions, hidden_states)
        return self.ln_f(hidden_states)


class GPTJForCausalLM(CausalLMWrapper):
    body_name = "transformer"
    embedding_name = "wte"
    layers_name = "h"
    attention_name = "attn.attn"
    tie_word_embeddings_default = False
    supports_quantization = True  # every projection but the LM head

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        head_dim = config.hidden_size // config.num_attention_heads
        if not config.rotary_dim or config.rotary_dim > head_dim:
            raise ConfigError(f"GPT-J rotary_dim {config.rotary_dim!r} is not supported: it must be set and at most "
                              f"the head size {head_dim}")
        super().__init__(config, max_position, quant_config)
        # The head's bias over the whole vocabulary, added after the ranks' logits are gathered.
        self.lm_head_bias = nn.Parameter(torch.zeros(config.vocab_size), requires_grad=False)
        self.lm_head_bias.weight_loader = lambda p, w, shard_id=None: default_weight_loader(p, w)  # type: ignore[attr-defined]

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        return GPTJModel(config, max_position, self.quant_config)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden_states) + self.lm_head_bias

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def renamed() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.endswith((".attn.bias", ".attn.masked_bias")):  # old checkpoints' causal-mask buffers
                    continue
                if name == "lm_head.bias":
                    name = "lm_head_bias"
                elif self.tie_word_embeddings and name == "lm_head.weight":
                    continue
                yield name, tensor

        return load_params(self, renamed(), _QKV)
