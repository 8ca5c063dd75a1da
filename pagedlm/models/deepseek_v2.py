"""DeepSeek-V2 / V3 (``DeepseekV2ForCausalLM``: DeepSeek-V2, V2-Lite; ``DeepseekV3ForCausalLM``:
DeepSeek-V3, R1, Kimi-K2): multi-head latent attention (MLA) and DeepSeek MoE blocks.

MLA: q = q_proj(x) (``q_lora_rank`` None, V2-Lite) or q_b_proj(q_a_layernorm(q_a_proj(x)));
kv_a_proj_with_mqa(x) = [latent (``kv_lora_rank``) | k_pe (``qk_rope_head_dim``)];
kv_b_proj(kv_a_layernorm(latent)) gives each head [k_nope | v]. RoPE (adjacent pairs, GPT-J
style; V3's ``rope_interleave`` False: halves) turns q_pe and the one k_pe every head shares;
K = [k_nope | k_pe], Q = [q_nope | q_pe]. The softmax scale is (qk_nope + qk_rope)^-0.5 times
YaRN's mscale(factor, ``mscale_all_dim``) squared, as transformers computes it.

The KV cache holds K and V decompressed, per query head, in pagedlm's ordinary paged cache
(vLLM's non-MLA fallback does the same): num_kv_heads = num_attention_heads and one head
width for both, max(qk_nope + qk_rope, v_head_dim) (``config.attention_shape``), V (and, if
narrower, Q / K) zero-padded to it and the output cut back to v_head_dim per head (zero
columns add nothing to the scores and give zero outputs, so this is exact). That is
num_heads * 2 * 192 values a token per layer for V3, against 576 for vLLM's latent cache
(the compressed latent plus k_pe, attention absorbed into kv_b_proj): the latent cache is
future work. The GPU kernels take the non-power-of-two head width (192) by masking.

MoE: dense MLPs on the first ``first_k_dense_replace`` layers (and off the ``moe_layer_freq``
grid, as vLLM reads it), then routed experts plus ``n_shared_experts`` shared ones
(``Glm4MoeMoE``). V3: sigmoid scores, the choice on scores plus ``e_score_correction_bias``
within the ``topk_group`` best of ``n_group`` groups (each scored by the sum of its best
two), ``topk_method`` "noaux_tc". V2: softmax scores, ``topk_method`` "greedy" (plain top-k)
or "group_limited_greedy" (groups scored by their best expert). Both: the picked weights
renormalised with ``norm_topk_prob`` (transformers' V2 ignores that flag; every V2 checkpoint
has it off) and scaled by ``routed_scaling_factor``.

Tensor parallelism splits the heads (q_proj / q_b_proj and kv_b_proj by output, o_proj by
input) and keeps q_a_proj, kv_a_proj_with_mqa and the latent norms whole on every rank; the
experts split as in the other MoE models. Quantized checkpoints (DeepSeek-V3's own block-wise
fp8 among them) run the MLA, dense and shared-expert projections through their linear
methods and dequantize the routed experts while loading, as the other MoE models do. Not
supported, and refused: pipeline parallelism, LoRA, other routing methods. The
multi-token-prediction layers (``num_nextn_predict_layers``, past ``num_hidden_layers``) are
not loaded."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.config import ConfigError, attention_shape, mla_head_dims
from pagedlm.layers.attention import Attention
from pagedlm.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from pagedlm.layers.norm import RMSNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding, yarn_get_mscale
from pagedlm.models.glm4_moe import Glm4MoeForCausalLM, Glm4MoeMoE
from pagedlm.models.gpt_neox import partial_rotary_embedding
from pagedlm.models.llama import rope_settings
from pagedlm.models.mixtral import MoEDecoderLayer
from pagedlm.models.qwen2_moe import Qwen2MoeMLP, check_moe_config
from pagedlm.worker.distributed import local_attention_heads

# The latent norms' epsilon: transformers (and DeepSeek's own code) build them with the
# RMSNorm default, not the config's rms_norm_eps.
LATENT_NORM_EPS = 1e-6


def mla_softmax_scale(config: Any) -> float:
    """(qk_nope + qk_rope)^-0.5, times mscale(factor, mscale_all_dim)^2 under a scaled RoPE
    with ``mscale_all_dim`` (transformers' ``yarn_apply_mscale``)."""
    qk_nope, qk_rope, _ = mla_head_dims(config)
    scale = (qk_nope + qk_rope) ** -0.5
    _, rope_type, params, original_max = rope_settings(config)
    mscale_all_dim = params.get("mscale_all_dim")
    if rope_type != "default" and mscale_all_dim:
        factor = params.get("factor") or config.max_position_embeddings / original_max
        scale *= yarn_get_mscale(float(factor), float(mscale_all_dim)) ** 2
    return scale


class DeepseekV2MLAAttention(nn.Module):
    """Multi-head latent attention over a decompressed paged cache (see the module docstring)."""

    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, quant_config: QuantizationConfig | None = None,
                 prefix: str = "") -> None:
        super().__init__()
        self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim = mla_head_dims(config)
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        self.kv_lora_rank = config.kv_lora_rank
        self.q_lora_rank = config.q_lora_rank
        num_heads, _, self.head_dim = attention_shape(config)  # head_dim: the cache's (padded) width
        self.num_heads, _ = local_attention_heads(num_heads, num_heads)  # this rank's
        hidden, bias = config.hidden_size, bool(getattr(config, "attention_bias", False))
        quant = {"quant_config": quant_config}
        if self.q_lora_rank is None:
            self.q_proj = ColumnParallelLinear(hidden, num_heads * self.qk_head_dim, **quant, prefix=f"{prefix}.q_proj")
        else:
            self.q_a_proj = ReplicatedLinear(hidden, self.q_lora_rank, bias, **quant, prefix=f"{prefix}.q_a_proj")
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = ColumnParallelLinear(self.q_lora_rank, num_heads * self.qk_head_dim, **quant,
                                                 prefix=f"{prefix}.q_b_proj")
        self.kv_a_proj_with_mqa = ReplicatedLinear(hidden, self.kv_lora_rank + self.qk_rope_head_dim, bias, **quant,
                                                   prefix=f"{prefix}.kv_a_proj_with_mqa")
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = ColumnParallelLinear(self.kv_lora_rank, num_heads * (self.qk_nope_head_dim + self.v_head_dim),
                                              **quant, prefix=f"{prefix}.kv_b_proj")
        self.o_proj = RowParallelLinear(num_heads * self.v_head_dim, hidden, bias, **quant, prefix=f"{prefix}.o_proj")
        self.rotary_emb = rotary_emb
        self.attn = Attention(num_heads, self.head_dim, num_heads, mla_softmax_scale(config))

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """[T, H, d] -> [T, H * head_dim], zeros after the d features of each head."""
        pad = self.head_dim - x.shape[-1]
        return (F.pad(x, (0, pad)) if pad else x).reshape(x.shape[0], -1)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        num_tokens, heads = hidden_states.shape[0], self.num_heads
        if self.q_lora_rank is None:
            q = self.q_proj(hidden_states)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
        q_nope, q_pe = q.view(num_tokens, heads, self.qk_head_dim).split(
            [self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(hidden_states).split([self.kv_lora_rank, self.qk_rope_head_dim], -1)
        kv = self.kv_b_proj(self.kv_a_layernorm(latent.contiguous()))
        k_nope, v = kv.view(num_tokens, heads, -1).split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        # RoPE on every head's q_pe and on the one k_pe the heads share.
        q_pe, k_pe = self.rotary_emb(positions, q_pe.reshape(num_tokens, -1), k_pe.contiguous())
        q = torch.cat((q_nope, q_pe.view(num_tokens, heads, -1)), dim=-1)
        k_pe = k_pe.view(num_tokens, 1, -1).expand(num_tokens, heads, self.qk_rope_head_dim)
        k = torch.cat((k_nope, k_pe), dim=-1)
        out = self.attn(self._pad(q), self._pad(k), self._pad(v))
        out = out.view(num_tokens, heads, self.head_dim)[..., : self.v_head_dim]
        return self.o_proj(out.reshape(num_tokens, heads * self.v_head_dim))


def check_deepseek_config(config: Any, v3: bool) -> None:
    """Refuse what the model file does not implement rather than run it differently."""
    check_moe_config(config)
    if not getattr(config, "n_routed_experts", None):
        raise ConfigError("DeepSeek-V2 / V3 without routed experts (n_routed_experts) are not supported")
    if mla_head_dims(config) is None:
        raise ConfigError(f"{type(config).__name__}: DeepSeek-V2 / V3 need kv_lora_rank, qk_nope_head_dim, "
                          "qk_rope_head_dim and v_head_dim (multi-head latent attention)")
    scoring, method = getattr(config, "scoring_func", None), getattr(config, "topk_method", None)
    if v3:
        if (scoring or "sigmoid") != "sigmoid" or (method or "noaux_tc") != "noaux_tc":
            raise ConfigError(f"DeepseekV3ForCausalLM routes with sigmoid scores and topk_method 'noaux_tc'; "
                              f"got scoring_func {scoring!r}, topk_method {method!r}")
    else:
        if (scoring or "softmax") != "softmax" or (method or "greedy") not in ("greedy", "group_limited_greedy"):
            raise ConfigError(f"DeepseekV2ForCausalLM routes with softmax scores and topk_method 'greedy' or "
                              f"'group_limited_greedy'; got scoring_func {scoring!r}, topk_method {method!r}")
    if v3 or method == "group_limited_greedy":
        groups, topk_group = int(getattr(config, "n_group", None) or 1), getattr(config, "topk_group", None)
        if config.n_routed_experts % groups or (groups > 1 and not topk_group):
            raise ConfigError(f"grouped routing needs n_group ({groups}) to divide n_routed_experts "
                              f"({config.n_routed_experts}) and a topk_group (got {topk_group!r})")


def is_moe_layer(config: Any, layer_idx: int) -> bool:
    """vLLM's reading: routed experts from ``first_k_dense_replace`` on, every ``moe_layer_freq``-th layer."""
    return (layer_idx >= int(getattr(config, "first_k_dense_replace", 0) or 0)
            and layer_idx % int(getattr(config, "moe_layer_freq", 1) or 1) == 0)


class DeepseekV2ForCausalLM(Glm4MoeForCausalLM):
    is_v3 = False  # DeepSeek-V3's routing (sigmoid, correction bias, noaux_tc)
    supports_quantization = True  # MLA, dense and shared-expert projections quantized; routed experts dequantized
    # V2-Lite's plain q_proj must not load into a fused qkv_proj: matched first, loaded as is.
    extra_params_mapping = [(".self_attn.q_proj.", ".self_attn.q_proj.", None)]

    @classmethod
    def make_layer(cls, config: Any, layer_idx: int, rotary_emb: RotaryEmbedding,
                   quant_config: QuantizationConfig | None = None) -> nn.Module:
        prefix = f"model.layers.{layer_idx}"
        if not is_moe_layer(config, layer_idx):
            mlp: nn.Module = Qwen2MoeMLP(config.hidden_size, config.intermediate_size, quant_config=quant_config,
                                         prefix=f"{prefix}.mlp")
        elif cls.is_v3:
            mlp = Glm4MoeMoE(config, quant_config=quant_config, prefix=f"{prefix}.mlp")
        else:
            mlp = Glm4MoeMoE(config, scoring_func="softmax", correction_bias=False,
                             grouped=getattr(config, "topk_method", None) == "group_limited_greedy",
                             quant_config=quant_config, prefix=f"{prefix}.mlp")
        attn = DeepseekV2MLAAttention(config, rotary_emb, quant_config, f"{prefix}.self_attn")
        return MoEDecoderLayer(config, attn, mlp, "mlp")

    @classmethod
    def make_rotary_embedding(cls, config: Any, max_position: int) -> RotaryEmbedding | None:
        """RoPE over the qk_rope_head_dim features: adjacent pairs (DeepSeek's layout; V2 always,
        V3 unless ``rope_interleave`` is False), else halves. Built before the layers: the
        config is checked here."""
        check_deepseek_config(config, cls.is_v3)
        _, qk_rope, _ = mla_head_dims(config)
        interleave = bool(getattr(config, "rope_interleave", True))
        return partial_rotary_embedding(config, qk_rope, max_position, is_neox_style=not interleave,
                                        rotary_dim=qk_rope)


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    is_v3 = True
