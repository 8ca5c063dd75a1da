"""Phi-3: the Llama layout with qkv_proj and gate_up_proj already fused in the checkpoint,
and LongRoPE ("su") scaling: short / long per-frequency factors and an attention factor on
cos/sin (see ``pagedlm.layers.rotary``).

Fused checkpoint tensors are split into their parts (q / k / v, gate / up) and each part is
loaded through the fused parameter's loader with its shard id, as separate tensors would be,
so a tensor-parallel loader takes its slice of each part. A quantized checkpoint's tensors are
split along the output dim their parameter declares (in packed units where it is packed: AWQ's
qweight / qzeros, block-wise fp8's scales); a tensor with no output dim (GPTQ's g_idx) or one
value per part (a per-tensor scale) goes whole to every part."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from pagedlm.config import attention_shape
from pagedlm.layers.quantization.base import QuantizationConfig, QuantizationError
from pagedlm.models.llama import LlamaForCausalLM
from pagedlm.models.utils import fused_parts

_FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def split_fused(weights: Iterable[tuple[str, torch.Tensor]], q_size: int, kv_size: int, intermediate_size: int,
                params: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """qkv_proj -> q_proj / k_proj / v_proj and gate_up_proj -> gate_proj / up_proj, each
    tensor along its parameter's output dim (``params``: the model's, by name; a tensor whose
    layer this rank does not hold passes through under its fused name, which the loader skips)."""
    for name, tensor in weights:
        fused = next((f for f in _FUSED if f".{f}." in name), None)
        param = params.get(name) if fused is not None else None
        if param is None:
            yield name, tensor
            continue
        sizes = [q_size, kv_size, kv_size] if fused == "qkv_proj" else [intermediate_size] * 2
        cut = lambda rows, pack, name=name, sizes=sizes: _split_sizes(rows, pack, sizes, name)  # noqa: E731
        for part, piece in fused_parts(tensor, param, _FUSED[fused], cut):
            yield name.replace(fused, part), piece


def _split_sizes(rows: torch.Tensor, pack: int, sizes: list[int], name: str) -> list[torch.Tensor]:
    units = [-(-size // pack) for size in sizes]
    if rows.shape[0] != sum(units):
        raise QuantizationError(f"{name}: a fused checkpoint tensor of {rows.shape[0]} rows along its output dim "
                                f"cannot be split into parts of {units}")
    return list(rows.split(units))


class Phi3ForCausalLM(LlamaForCausalLM):
    # Its PEFT adapters target the fused qkv_proj / gate_up_proj, which the LoRA layers do not.
    supports_quantization = True  # the fused checkpoint tensors split per part (split_fused)
    supports_lora = False

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        if getattr(config, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported for Phi-3 (only silu)")
        super().__init__(config, max_position, quant_config)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The fused tensors split into Llama's names, then Llama's loader (it skips the layers
        another pipeline stage holds and loads a tied LM head on the last stage)."""
        return super().load_weights(split_fused_for(self, weights))


def split_fused_for(model: LlamaForCausalLM, weights: Iterable[tuple[str, torch.Tensor]]
                    ) -> Iterator[tuple[str, torch.Tensor]]:
    """``split_fused`` with ``model``'s sizes and parameters."""
    num_heads, num_kv_heads, head_dim = attention_shape(model.config)
    return split_fused(weights, num_heads * head_dim, num_kv_heads * head_dim, model.config.intermediate_size,
                       dict(model.named_parameters(remove_duplicate=False)))
