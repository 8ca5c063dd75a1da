"""Phi-3: the Llama layout with qkv_proj and gate_up_proj already fused in the checkpoint
(each loads whole into the fused parameter), and LongRoPE ("su") scaling: short / long
per-frequency factors and an attention factor on cos/sin (see ``pagedlm.layers.rotary``)."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from pagedlm.models.llama import LlamaForCausalLM
from pagedlm.models.utils import load_params


class Phi3ForCausalLM(LlamaForCausalLM):
    def __init__(self, config: Any, max_position: int | None = None) -> None:
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported for Phi-3 (only silu)")
        super().__init__(config, max_position)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # Names already match (qkv_proj, gate_up_proj): no per-part mapping, shard id None.
        skip = ("lm_head.",) if self.tie_word_embeddings else ()
        return load_params(self, weights, (), skip)
