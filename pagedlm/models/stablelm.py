"""StableLM (StableLM-3B-4E1T, StableLM-2, StableCode): LayerNorms with a bias
(``layer_norm_eps``), RoPE on the first ``partial_rotary_factor`` of each head, q/k/v biases
(``use_qkv_bias``) and an o_proj without, the SiLU-gated MLP, and two options:

- ``qk_layernorm``: a LayerNorm without bias over each head's features, each head with its own
  weight (checkpoint ``q_layernorm.norms.<h>.weight``), before RoPE;
- ``use_parallel_residual``: one norm feeding attention and the MLP in parallel,
  x + attn(ln(x)) + mlp(ln(x)).

The layers keep Llama's (hidden_states, residual) interface (the final norm adds the last
block's output to the stream)."""

from __future__ import annotations

import re
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.layers.norm import LayerNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP, LlamaModel
from pagedlm.worker.distributed import get_tensor_model_parallel_rank

_PER_HEAD_NORM = re.compile(r"\.(q|k)_layernorm\.norms\.(\d+)\.weight$")


class PerHeadLayerNorm(nn.Module):
    """LayerNorm without bias over each head's features, a weight per head ([heads, head_dim],
    this tensor-parallel rank's heads: global heads from ``first_head``), loaded head by head."""

    def __init__(self, num_heads: int, head_dim: int, eps: float, first_head: int = 0) -> None:
        super().__init__()
        self.eps = eps
        self.first_head = first_head
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: int) -> None:
        local = shard_id - self.first_head
        if 0 <= local < param.shape[0]:  # another rank's head otherwise
            param.data[local].copy_(loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, heads * head_dim]
        heads = x.view(x.shape[0], *self.weight.shape)
        out = F.layer_norm(heads.float(), heads.shape[-1:], eps=self.eps) * self.weight.float()
        return out.to(x.dtype).view(x.shape)


class StableLmAttention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, quant_config: QuantizationConfig | None,
                 prefix: str, layer: int | None) -> None:
        super().__init__(config, rotary_emb, qkv_bias=bool(config.use_qkv_bias), qk_norm=False,
                         quant_config=quant_config, prefix=prefix, layer=layer, o_bias=False)
        self.qk_layernorm = bool(getattr(config, "qk_layernorm", False))
        if self.qk_layernorm:
            eps = config.layer_norm_eps
            self.q_layernorm = PerHeadLayerNorm(self.qkv_proj.num_heads, self.head_dim, eps,
                                                get_tensor_model_parallel_rank() * self.qkv_proj.num_heads)
            self.k_layernorm = PerHeadLayerNorm(self.qkv_proj.num_kv_heads, self.head_dim, eps,
                                                self.qkv_proj.kv_shard * self.qkv_proj.num_kv_heads)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_layernorm:
            q, k = self.q_layernorm(q.contiguous()), self.k_layernorm(k.contiguous())
        return self.o_proj(self.attn(q, k, v, positions, self.rotary_emb))  # RoPE with the cache write


class StableLmDecoderLayer(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__()
        self.self_attn = StableLmAttention(config, rotary_emb, quant_config, f"{prefix}.self_attn", layer)
        self.mlp = LlamaMLP(config, quant_config, f"{prefix}.mlp")
        self.parallel = bool(getattr(config, "use_parallel_residual", False))
        self.input_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)
        if not self.parallel:
            self.post_attention_layernorm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's block output(s), the stream before them)."""
        if residual is None:
            residual, hidden_states = hidden_states, self.input_layernorm(hidden_states)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        attn_out = self.self_attn(positions, hidden_states)
        if self.parallel:
            return attn_out + self.mlp(hidden_states), residual
        hidden_states, residual = self.post_attention_layernorm(attn_out, residual)
        return self.mlp(hidden_states), residual


class StableLmModel(LlamaModel):
    layer_cls = StableLmDecoderLayer

    def make_norm(self, config: Any) -> nn.Module:
        return LayerNorm(config.hidden_size, config.layer_norm_eps)


class StableLmForCausalLM(LlamaForCausalLM):
    model_cls = StableLmModel
    supports_quantization = True  # an 8-bit layer after a LayerNorm quantizes its own input (codes_for)
    supports_lora = False

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The per-head q / k norms (``norms.<h>.weight``) load head by head into one
        [heads, head_dim] weight; the rest as Llama's."""
        params = dict(self.named_parameters(remove_duplicate=False))
        loaded: set[str] = set()

        def others() -> Iterable[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                match = _PER_HEAD_NORM.search(name)
                if match is None:
                    yield name, tensor
                    continue
                target = name[:match.start()] + f".{match.group(1)}_layernorm.weight"
                param = params.get(target)
                if param is None:
                    raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in StableLmForCausalLM")
                param.weight_loader(param, tensor, int(match.group(2)))
                loaded.add(target)

        return loaded | super().load_weights(others())
