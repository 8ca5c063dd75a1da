"""Gemma 3 (text): Gemma 2's layout plus per-head q/k RMSNorm (1 + w), a separate RoPE per
layer type (local base ``rope_local_base_freq`` for sliding layers, the global base and
scaling for full ones), and no attention soft-capping (transformers' Gemma 3 does not apply
``attn_logit_softcapping``, so neither does this)."""

from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from pagedlm.config import attention_shape
from pagedlm.layers.embedding import VocabEmbedding
from pagedlm.layers.norm import RMSNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.gemma2 import (
    Gemma2Attention,
    Gemma2DecoderLayer,
    Gemma2ForCausalLM,
    check_causal,
    layer_sliding_windows,
)

logger = logging.getLogger(__name__)


def layer_type_rotary(config: Any, layer_type: str, max_position: int) -> RotaryEmbedding:
    """The RoPE of one layer type from ``rope_parameters[layer_type]`` (transformers 5 puts
    rope_theta / rope_local_base_freq / rope_scaling of older configs there)."""
    params = dict(config.rope_parameters[layer_type])
    _, _, head_dim = attention_shape(config)
    rope_type = params.get("rope_type", params.get("type", "default"))
    original_max = params.get("original_max_position_embeddings", config.max_position_embeddings)
    return RotaryEmbedding(head_dim, max_position, float(params["rope_theta"]), rope_type, params,
                           int(original_max), config.max_position_embeddings)


class Gemma3Attention(Gemma2Attention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, sliding_window: int | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__(config, rotary_emb, sliding_window, None, quant_config, prefix)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps, unit_offset=True)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps, unit_offset=True)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project_qkv(hidden_states)
        num_tokens = q.shape[0]
        q = self.q_norm(q.reshape(-1, self.head_dim)).view(num_tokens, self.q_size)
        k = self.k_norm(k.reshape(-1, self.head_dim)).view(num_tokens, self.kv_size)
        return self.o_proj(self.attn(q, k, v, positions, self.rotary_emb))  # RoPE with the cache write


class Gemma3TextModel(nn.Module):
    def __init__(self, config: Any, max_position: int, quant_config: QuantizationConfig | None = None,
                 prefix: str = "model") -> None:
        super().__init__()
        check_causal(config)
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.register_buffer("normalizer", torch.tensor(config.hidden_size**0.5), persistent=False)
        windows = layer_sliding_windows(config)
        layer_types = ["sliding_attention" if w is not None else "full_attention" for w in windows]
        rotary = {t: layer_type_rotary(config, t, max_position) for t in sorted(set(layer_types))}
        self.layers = nn.ModuleList(
            Gemma2DecoderLayer(config, Gemma3Attention(config, rotary[t], w, quant_config,
                                                       f"{prefix}.layers.{i}.self_attn"), quant_config,
                               f"{prefix}.layers.{i}")
            for i, (t, w) in enumerate(zip(layer_types, windows))
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, unit_offset=True)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids) * self.normalizer.to(self.embed_tokens.weight.dtype)
        residual = None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    model_cls = Gemma3TextModel


# Checkpoint prefixes of Gemma3ForConditionalGeneration: the legacy layout of the Hub's Gemma 3
# 4B/12B/27B (language_model.model.*) and transformers 5's (model.language_model.*).
_TEXT_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
                  ("language_model.lm_head.", "lm_head."))
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


class Gemma3ForConditionalGeneration(Gemma3ForCausalLM):
    """The language model of a multimodal Gemma 3 checkpoint, served as a text-only model: its
    config is ``text_config`` (see ``pagedlm.models.multimodal``), the vision tower and
    projector weights are skipped at load, and image inputs are refused before they get here."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        skipped = 0

        def text_weights() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal skipped
            for name, tensor in weights:
                if name.startswith(_VISION_PREFIXES):
                    skipped += 1
                    continue
                yield next((new + name[len(old):] for old, new in _TEXT_PREFIXES if name.startswith(old)), name), tensor

        loaded = super().load_weights(text_weights())
        logger.info("Gemma3ForConditionalGeneration: serving the language model only; skipped %d vision tower / "
                    "projector weights (image inputs are refused)", skipped)
        return loaded
