"""Activations handed to an 8-bit linear layer already quantized.

A W8A8 layer with dynamic per-token activation scales quantizes its input first thing. When
that input comes straight out of an RMSNorm, the norm can emit the codes itself in the same
kernel (one launch and one pass over the activations fewer per
layer): the consumer says which code type it takes (``ReplicatedLinear.input_codes_dtype``),
the producer returns ``ActivationCodes`` instead of a tensor, and the layer's method skips its
own quantization. The codes are the bytes the layer's own quantizer would make.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ActivationCodes:
    codes: torch.Tensor  # [T, K] fp8 e4m3 / int8
    scale: torch.Tensor  # [T, 1] float32, per token
    dtype: torch.dtype  # the activations' own type: the layer's output type

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape
