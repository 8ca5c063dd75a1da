"""Qwen3-MoE: Qwen3 attention (per-head q/k RMSNorm, bias per ``attention_bias``) and sparse
MoE blocks without a shared expert (softmax, top-k, renormalised with ``norm_topk_prob``)."""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention
from pagedlm.models.mixtral import MoEDecoderLayer
from pagedlm.models.qwen2_moe import (
    Qwen2MoeForCausalLM,
    Qwen2MoeMLP,
    Qwen2MoeSparseMoeBlock,
    check_moe_config,
    is_sparse_layer,
)


class Qwen3MoeForCausalLM(Qwen2MoeForCausalLM):
    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding) -> nn.Module:
        check_moe_config(config)
        attn = LlamaAttention(config, rotary_emb, qkv_bias=bool(getattr(config, "attention_bias", False)),
                              qk_norm=True, layer=layer_idx)
        if is_sparse_layer(config, layer_idx):
            mlp: nn.Module = Qwen2MoeSparseMoeBlock(config, shared_expert=False)
        else:
            mlp = Qwen2MoeMLP(config.hidden_size, config.intermediate_size)
        return MoEDecoderLayer(config, attn, mlp, "mlp")
