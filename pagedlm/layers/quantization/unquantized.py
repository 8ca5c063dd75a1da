"""Unquantized linear layers: one weight [out, in] in the model dtype, ``F.linear`` (a Triton GEMV for
decode batches on a GPU where it is faster: ``pagedlm.kernels.gemv``)."""

from __future__ import annotations

import torch
from torch import nn

from pagedlm.kernels.gemv import unquantized_linear
from pagedlm.layers.quantization.base import QuantMethod, WeightLoader, new_param


class UnquantizedLinearMethod(QuantMethod):
    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype,
                       weight_loader: WeightLoader) -> None:
        weight = new_param((sum(output_partition_sizes), input_size_per_partition), params_dtype,
                           output_dim=0, input_dim=1, weight_loader=weight_loader)
        layer.register_parameter("weight", weight)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return unquantized_linear(x, layer.weight, bias)  # decode batches: the GEMV where it wins
