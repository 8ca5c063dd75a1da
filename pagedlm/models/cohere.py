"""Cohere Command-R (``CohereForCausalLM``) and Command-R7B / Command-A
(``Cohere2ForCausalLM``): one LayerNorm without bias feeds attention and the SiLU-gated MLP in
parallel (x + attn(ln(x)) + mlp(ln(x))), RoPE rotates adjacent pairs (GPT-J style), the
logits are multiplied by ``logit_scale``, and the head is tied to the embedding.

Command-R+ adds ``use_qk_norm``: a LayerNorm over each head's features with its own weights
per head (a [heads, head_dim] weight, split by heads across tensor-parallel ranks). Cohere 2
alternates sliding-window layers, which use RoPE, with global layers, which use no position
embedding at all (``layer_types``)."""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.config import ConfigError, attention_shape, layer_sliding_window
from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import VocabParallelEmbedding
from pagedlm.layers.linear import QKVParallelLinear, RowParallelLinear, default_weight_loader
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.causal_lm import CausalLMWrapper
from pagedlm.models.llama import LlamaMLP, rope_settings
from pagedlm.models.utils import LLAMA_STACKED_PARAMS, load_params
from pagedlm.worker.distributed import get_tensor_model_parallel_rank


class CohereLayerNorm(nn.Module):
    """LayerNorm with a weight and no bias over the last dim; a 2-D ``shape`` [heads, head_dim]
    gives each head its own weights. ``shard`` / ``num_shards``: the rows of the checkpoint's
    weight this tensor-parallel rank keeps (its heads)."""

    def __init__(self, shape: tuple[int, ...], eps: float, shard: int = 0) -> None:
        super().__init__()
        self.eps = eps
        self.shard = shard
        self.weight = nn.Parameter(torch.ones(shape), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        if param.dim() == 2:  # per-head weights: this rank's heads
            loaded_weight = loaded_weight.narrow(0, self.shard * param.shape[0], param.shape[0])
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [..., *shape]: normalised over the last dim only.
        out = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps) * self.weight.float()
        return out.to(x.dtype)


class CohereAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, layer: int,
                 quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        num_heads, num_kv_heads, self.head_dim = attention_shape(config)
        bias = bool(getattr(config, "attention_bias", False))
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, num_heads, num_kv_heads, bias,
                                          quant_config=quant_config, prefix=f"{prefix}.qkv_proj")
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        self.o_proj = RowParallelLinear(num_heads * self.head_dim, config.hidden_size, bias, quant_config=quant_config,
                                        prefix=f"{prefix}.o_proj")
        self.use_qk_norm = bool(getattr(config, "use_qk_norm", False))
        if self.use_qk_norm:
            eps = config.layer_norm_eps
            self.q_norm = CohereLayerNorm((self.qkv_proj.num_heads, self.head_dim), eps,
                                          get_tensor_model_parallel_rank())
            self.k_norm = CohereLayerNorm((self.qkv_proj.num_kv_heads, self.head_dim), eps, self.qkv_proj.kv_shard)
        self.rotary_emb = rotary_emb  # None: a global Cohere 2 layer, no position embedding
        self.attn = Attention(num_heads, self.head_dim, num_kv_heads, self.head_dim**-0.5,
                              layer_sliding_window(config, layer))

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.use_qk_norm:
            num_tokens = q.shape[0]
            q = self.q_norm(q.view(num_tokens, -1, self.head_dim)).view(num_tokens, self.q_size)
            k = self.k_norm(k.view(num_tokens, -1, self.head_dim)).view(num_tokens, self.kv_size)
        return self.o_proj(self.attn(q, k, v, positions, self.rotary_emb))


class CohereDecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, layer: int,
                 quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        self.input_layernorm = CohereLayerNorm((config.hidden_size,), config.layer_norm_eps)
        self.self_attn = CohereAttention(config, rotary_emb, layer, quant_config, f"{prefix}.self_attn")
        self.mlp = LlamaMLP(config, quant_config, f"{prefix}.mlp")

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        normed = self.input_layernorm(hidden_states)
        return hidden_states + self.self_attn(positions, normed) + self.mlp(normed)


class CohereModel(nn.Module):
    def __init__(self, config: Any, max_position: int, nope_global_layers: bool = False,
                 quant_config: QuantizationConfig | None = None,
                 prefix: str = "model") -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        _, _, head_dim = attention_shape(config)
        base, rope_type, params, original_max = rope_settings(config)
        rotary_emb = RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                                     config.max_position_embeddings, is_neox_style=False)

        def layer_rotary(i: int) -> RotaryEmbedding | None:
            # Cohere 2: only the sliding-window layers are rotated (its global layers are NoPE).
            nope = nope_global_layers and config.layer_types[i] != "sliding_attention"
            return None if nope else rotary_emb

        self.layers = nn.ModuleList(CohereDecoderLayer(config, layer_rotary(i), i, quant_config, f"{prefix}.layers.{i}")
                                    for i in range(config.num_hidden_layers))
        self.norm = CohereLayerNorm((config.hidden_size,), config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden_states = layer(positions, hidden_states)
        return self.norm(hidden_states)


class CohereForCausalLM(CausalLMWrapper):
    nope_global_layers = False  # Cohere 2's global layers take no position embedding
    supports_quantization = True  # every projection but the LM head

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ConfigError(f"Cohere hidden_act {config.hidden_act!r} is not supported (only silu)")
        super().__init__(config, max_position, quant_config)
        scale = getattr(config, "logit_scale", None)
        self.logit_scale = 1.0 if scale is None else float(scale)

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        return CohereModel(config, max_position, self.nope_global_layers, self.quant_config)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden_states) * self.logit_scale

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skip = ("lm_head.",) if self.tie_word_embeddings else ()
        return load_params(self, weights, LLAMA_STACKED_PARAMS, skip_prefixes=skip)


class Cohere2ForCausalLM(CohereForCausalLM):
    """Command-R7B / Command-A: Cohere with interleaved sliding-window (RoPE) and global
    (no position embedding) layers."""

    nope_global_layers = True

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        if not getattr(config, "layer_types", None):
            raise ConfigError("Cohere2 config has no layer_types (which layers slide and use RoPE)")
        super().__init__(config, max_position, quant_config)
