"""``--quantization int8``: online int8 W8A8 for a float checkpoint, as online fp8 is for fp8.
Each linear layer's weight is quantized while loading per output channel (symmetric, scale =
the row's largest magnitude / 127), activations per token at run time; the layers then run
the int8 GEMM / GEMV kernels of compressed-tensors' int8 W8A8 checkpoints, and equal such a
checkpoint quantized the same way. The LM head stays unquantized. An int8 checkpoint is a
``compressed-tensors`` one (its ``quantization_config`` says so): this name takes none."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedlm.layers.quantization import register_quantization_config
from pagedlm.layers.quantization.base import QuantizationConfig, QuantizationError, QuantMethod
from pagedlm.layers.quantization.w8a8 import W8LinearMethod, W8Scheme


@register_quantization_config
class Int8Config(QuantizationConfig):
    name = "int8"

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "Int8Config":
        if hf_quant_cfg:
            raise QuantizationError("--quantization int8 quantizes a float checkpoint while loading; int8 checkpoints "
                                    "are compressed-tensors ones (run them without --quantization)")
        return cls()

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantMethod | None:
        if prefix.split(".")[-1] == "lm_head":
            return None
        return W8LinearMethod(W8Scheme(torch.int8, weight_per_channel=True, activations="token", online=True))
