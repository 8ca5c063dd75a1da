"""Unquantized linear layers: one weight [out, in] in the model dtype, ``F.linear``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.kernels.gemv import MAX_M, unquantized_linear
from pagedlm.layers.quantization.base import QuantMethod, WeightLoader, new_param


class UnquantizedLinearMethod(QuantMethod):
    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype,
                       weight_loader: WeightLoader) -> None:
        weight = new_param((sum(output_partition_sizes), input_size_per_partition), params_dtype,
                           output_dim=0, input_dim=1, weight_loader=weight_loader)
        layer.register_parameter("weight", weight)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.is_cuda and x.dim() == 2 and x.shape[0] <= MAX_M:  # decode batches: the GEMV where it wins
            return unquantized_linear(x, layer.weight, bias)
        return F.linear(x, layer.weight, bias)
