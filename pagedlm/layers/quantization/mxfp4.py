"""MXFP4 checkpoints (``quantization_config: {"quant_method": "mxfp4"}``), as OpenAI ships
gpt-oss: the MoE experts' projections in the OCP microscaling format, everything else in
bf16. pagedlm dequantizes the experts to the model's dtype while loading (no MXFP4 kernel),
so the format costs load time, not accuracy, and the model runs as a bf16 checkpoint would.

On disk, per projection (``mlp.experts.gate_up_proj`` / ``down_proj``):
  ``<name>_blocks`` uint8 [E, out, in / 32, 16]: 32 FP4 (e2m1) codes per block, two per byte,
      element 2j in the low nibble and 2j + 1 in the high one;
  ``<name>_scales`` uint8 [E, out, in / 32]: one e8m0 exponent per block, value 2^(s - 127).
An e2m1 code is a sign bit (8) and a magnitude index into 0, 0.5, 1, 1.5, 2, 3, 4, 6.
``dequantize_mxfp4`` -> [E, out, in] (transformers' ``convert_moe_packed_tensors`` returns
the transpose, its experts' [E, in, out] layout).

Linear layers are never quantized under this config (``get_quant_method`` -> None); the
model (``pagedlm.models.gpt_oss``) routes the ``_blocks`` / ``_scales`` pairs through
``dequantize_mxfp4``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedlm.layers.quantization import register_quantization_config
from pagedlm.layers.quantization.base import QuantizationConfig, QuantizationError

FP4_E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
MXFP4_BLOCK = 32  # elements per shared scale
E8M0_BIAS = 127


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """blocks uint8 [..., G, 16], scales uint8 [..., G] -> [..., G * 32] in ``dtype``
    (computed in float32: every value is an e2m1 code times a power of two, exact in bf16
    unless the exponent leaves bf16's range)."""
    if blocks.shape[:-1] != scales.shape or blocks.shape[-1] != MXFP4_BLOCK // 2:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} and scales {tuple(scales.shape)} do not match "
                         f"([..., G, 16] and [..., G])")
    lut = torch.tensor(FP4_E2M1_VALUES, dtype=torch.float32, device=blocks.device)
    codes = blocks.to(torch.uint8)
    low, high = (codes & 0x0F).long(), (codes >> 4).long()
    values = torch.stack((lut[low], lut[high]), dim=-1).flatten(-2)  # [..., G, 32]: low nibble first
    exponents = scales.to(torch.int32) - E8M0_BIAS
    values = torch.ldexp(values, exponents.unsqueeze(-1))
    return values.flatten(-2).to(dtype)


@register_quantization_config
class Mxfp4Config(QuantizationConfig):
    """gpt-oss's MXFP4 experts, dequantized at load time; linear layers stay unquantized."""

    name = "mxfp4"

    def __init__(self, modules_to_not_convert: list[str] | None = None) -> None:
        self.modules_to_not_convert = list(modules_to_not_convert or [])

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "Mxfp4Config":
        if not hf_quant_cfg:
            raise QuantizationError("--quantization mxfp4 needs an MXFP4 checkpoint (config.json quantization_config "
                                    "with quant_method 'mxfp4', as gpt-oss ships); pagedlm does not quantize to MXFP4 "
                                    "while loading")
        return cls(hf_quant_cfg.get("modules_to_not_convert"))

    def get_quant_method(self, layer: nn.Module, prefix: str) -> None:
        return None


__all__ = ["FP4_E2M1_VALUES", "Mxfp4Config", "dequantize_mxfp4"]
