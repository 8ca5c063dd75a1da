"""Mixtral: Llama attention with a sparse MoE block in place of the MLP: a router
(``gate``, softmax then top-k, always renormalised) and stacked experts run by FusedMoE.
``MoEModel`` is the decoder stack the Qwen MoE files share (their layers differ)."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import torch
from torch import nn

from pagedlm.config import attention_shape
from pagedlm.layers.embedding import VocabEmbedding
from pagedlm.layers.fused_moe import FusedMoE
from pagedlm.layers.linear import ReplicatedLinear, default_weight_loader
from pagedlm.layers.norm import RMSNorm
from pagedlm.layers.quantization.base import QuantizationConfig
from pagedlm.layers.quantization.moe_experts import dequantized_experts
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.causal_lm import CausalLMWrapper
from pagedlm.models.llama import LlamaAttention, PreNormDecoderLayer, rope_settings
from pagedlm.models.utils import LLAMA_STACKED_PARAMS, load_params


class MixtralSparseMoeBlock(nn.Module):
    def __init__(self, config: Any, **routing: Any) -> None:
        """``routing``: FusedMoE's routing options (default: softmax top-k, renormalized)."""
        super().__init__()
        if config.hidden_act != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported for MoE experts (only silu)")
        self.gate = ReplicatedLinear(config.hidden_size, config.num_local_experts)
        self.experts = FusedMoE(config.num_local_experts, config.num_experts_per_tok, config.hidden_size,
                                config.intermediate_size, **{"renormalize": True, **routing})

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.experts(hidden_states, self.gate(hidden_states))


def plain_loader(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
    """The loader of a replicated parameter outside the linear layers (a bias, a router's
    correction bias): the checkpoint tensor copied whole, its shape checked."""
    default_weight_loader(param, loaded_weight)


# The MoE families share Llama's layer; only the feed-forward block (and its name) differs.
MoEDecoderLayer = PreNormDecoderLayer


# (config, layer index, shared rotary embedding) -> decoder layer
LayerFactory = Callable[[Any, int, RotaryEmbedding], nn.Module]


def default_rotary_embedding(config: Any, max_position: int) -> RotaryEmbedding:
    """RoPE over each whole head, halves rotated (neox style)."""
    _, _, head_dim = attention_shape(config)
    base, rope_type, params, original_max = rope_settings(config)
    return RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                           config.max_position_embeddings)


class MoEModel(nn.Module):
    """``rotary_emb`` None: the default RoPE. Granite's ``embedding_multiplier`` scales the
    embeddings; ``make_norm`` builds the final norm (default RMSNorm)."""

    def __init__(self, config: Any, max_position: int, make_layer: LayerFactory,
                 rotary_emb: RotaryEmbedding | None = None, make_norm: Callable[[Any], nn.Module] | None = None
                 ) -> None:
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        rotary_emb = rotary_emb or default_rotary_embedding(config, max_position)
        self.layers = nn.ModuleList(make_layer(config, i, rotary_emb) for i in range(config.num_hidden_layers))
        self.norm = make_norm(config) if make_norm else RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.embedding_multiplier = float(getattr(config, "embedding_multiplier", 1.0))

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        hidden_states = self.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
        if self.embedding_multiplier != 1.0:
            hidden_states = hidden_states * self.embedding_multiplier
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class MoEForCausalLM(CausalLMWrapper):
    """Embedding, MoE decoder stack, LM head; subclasses give the layer and expert names.
    Granite's ``logits_scaling`` divides the logits; ``lm_head_bias`` adds a bias to them.

    A family that sets ``supports_quantization`` takes ``quant_config`` in its ``make_layer``
    (attention and dense layers quantized by their linear methods); a quantized checkpoint's
    routed experts are dequantized while loading (``moe_experts``)."""

    expert_names = ("w1", "w2", "w3")  # checkpoint names of (gate, down, up) per expert
    extra_params_mapping: list[tuple[str, str, Any]] = []  # a family's own fused names, matched first
    tie_word_embeddings_default = False

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        super().__init__(config, max_position, quant_config)
        self.logits_scaling = float(getattr(config, "logits_scaling", 1.0))
        self.lm_head_bias: nn.Parameter | None = None
        if self.has_lm_head_bias(config):
            self.lm_head_bias = nn.Parameter(torch.zeros(config.vocab_size), requires_grad=False)
            self.lm_head_bias.weight_loader = plain_loader  # type: ignore[attr-defined]

    @staticmethod
    def has_lm_head_bias(config: Any) -> bool:
        return False

    @staticmethod
    def make_rotary_embedding(config: Any, max_position: int) -> RotaryEmbedding | None:
        return None  # the default

    make_norm: Callable[[Any], nn.Module] | None = None

    def make_body(self, config: Any, max_position: int) -> nn.Module:
        make_layer = self.make_layer
        if self.quant_config is not None:
            make_layer = functools.partial(make_layer, quant_config=self.quant_config)
        return MoEModel(config, max_position, make_layer, self.make_rotary_embedding(config, max_position),
                        self.make_norm)

    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding) -> nn.Module:
        raise NotImplementedError

    def num_experts(self) -> int:
        raise NotImplementedError

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if inputs_embeds is None:
            return self.model(input_ids, positions)
        return self.model(input_ids, positions, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head.compute_logits(hidden_states)
        if self.lm_head_bias is not None:
            logits = logits + self.lm_head_bias
        return logits if self.logits_scaling == 1.0 else logits / self.logits_scaling

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        gate, down, up = self.expert_names
        # Expert names first: Qwen's experts.N.gate_proj must not match the plain .gate_proj entry.
        # Per-expert tensors, or all experts in one (transformers 5's experts.gate_up_proj).
        mapping = (list(self.extra_params_mapping) + FusedMoE.expert_params_mapping(self.num_experts(), gate, down, up)
                   + FusedMoE.stacked_expert_params_mapping() + LLAMA_STACKED_PARAMS)
        weights = ((("lm_head_bias" if name == "lm_head.bias" else name), tensor) for name, tensor in weights)
        if self.quant_config is not None:
            weights = dequantized_experts(weights, self.quant_config, self.expert_sizes())
        skip = ("lm_head.weight",) if self.tie_word_embeddings else ()
        return load_params(self, weights, mapping, skip)

    def expert_sizes(self) -> dict[str, tuple[int, int]]:
        """Checkpoint name of each expert projection -> (input size, output size)."""
        gate, down, up = self.expert_names
        experts = next(m for m in self.modules() if isinstance(m, FusedMoE))
        hidden, inter = self.config.hidden_size, experts.intermediate_size * experts.tp_size  # unsharded
        return {gate: (hidden, inter), up: (hidden, inter), down: (inter, hidden)}


class MixtralForCausalLM(MoEForCausalLM):
    supports_quantization = True  # attention quantized; a quantized checkpoint's experts dequantized at load

    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding,
                   quant_config: QuantizationConfig | None = None) -> nn.Module:
        attn = LlamaAttention(config, rotary_emb, qkv_bias=False, qk_norm=False, layer=layer_idx,
                              quant_config=quant_config, prefix=f"model.layers.{layer_idx}.self_attn")
        return MoEDecoderLayer(config, attn, MixtralSparseMoeBlock(config), "block_sparse_moe")

    def num_experts(self) -> int:
        return self.config.num_local_experts
