"""Gemma (1): Llama's layers with (1 + weight) RMSNorms, embeddings scaled by
sqrt(hidden_size) and a GeGLU MLP (``hidden_act`` gelu_pytorch_tanh; LlamaMLP picks it from
the config). Head dimension and the tied LM head come from the config as for Llama."""

from __future__ import annotations

from typing import Any

import torch

from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.gemma2 import check_causal
from pagedlm.models.llama import LlamaAttention, LlamaForCausalLM, LlamaMLP, LlamaModel, PreNormDecoderLayer


class GemmaDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__(config, LlamaAttention(config, rotary_emb, quant_config=quant_config,
                                                prefix=f"{prefix}.self_attn", layer=layer),
                         LlamaMLP(config, quant_config, f"{prefix}.mlp"), norm_unit_offset=True)


class GemmaModel(LlamaModel):
    layer_cls = GemmaDecoderLayer
    norm_unit_offset = True

    def __init__(self, config: Any, max_position: int, quant_config: QuantizationConfig | None = None,
                 prefix: str = "model") -> None:
        check_causal(config)
        super().__init__(config, max_position, quant_config, prefix)
        # transformers multiplies by sqrt(hidden) rounded to the weights' dtype (the loader
        # builds the model under that default dtype).
        self.embedding_multiplier = torch.tensor(config.hidden_size**0.5, dtype=torch.get_default_dtype()).item()


class GemmaForCausalLM(LlamaForCausalLM):
    model_cls = GemmaModel
