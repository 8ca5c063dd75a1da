"""Phi-3: the Llama layout with qkv_proj and gate_up_proj already fused in the checkpoint,
and LongRoPE ("su") scaling: short / long per-frequency factors and an attention factor on
cos/sin (see ``pagedlm.layers.rotary``).

Fused checkpoint tensors are split into their parts (q / k / v, gate / up) and each part is
loaded through the fused parameter's loader with its shard id, as separate tensors would be,
so a tensor-parallel loader takes its slice of each part."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from pagedlm.config import attention_shape
from pagedlm.models.llama import LlamaForCausalLM


def split_fused(weights: Iterable[tuple[str, torch.Tensor]], q_size: int, kv_size: int
                ) -> Iterator[tuple[str, torch.Tensor]]:
    """qkv_proj -> q_proj / k_proj / v_proj and gate_up_proj -> gate_proj / up_proj (rows)."""
    for name, tensor in weights:
        if ".qkv_proj." in name:
            for part, piece in zip(("q_proj", "k_proj", "v_proj"), tensor.split([q_size, kv_size, kv_size])):
                yield name.replace("qkv_proj", part), piece
        elif ".gate_up_proj." in name:
            gate, up = tensor.chunk(2, dim=0)
            yield name.replace("gate_up_proj", "gate_proj"), gate
            yield name.replace("gate_up_proj", "up_proj"), up
        else:
            yield name, tensor


class Phi3ForCausalLM(LlamaForCausalLM):
    # Its checkpoints store qkv / gate_up fused; splitting quantized scales is not built, and
    # its PEFT adapters target the fused qkv_proj / gate_up_proj, which the LoRA layers do not.
    supports_quantization = False
    supports_lora = False

    def __init__(self, config: Any, max_position: int | None = None) -> None:
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported for Phi-3 (only silu)")
        super().__init__(config, max_position)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The fused tensors split into Llama's names, then Llama's loader (it skips the layers
        another pipeline stage holds and loads a tied LM head on the last stage)."""
        num_heads, num_kv_heads, head_dim = attention_shape(self.config)
        return super().load_weights(split_fused(weights, num_heads * head_dim, num_kv_heads * head_dim))
