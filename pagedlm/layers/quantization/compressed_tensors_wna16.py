"""compressed-tensors ``pack-quantized`` weights (llm-compressor's W4A16 / W8A16: GPTQ, AWQ or
round-to-nearest int weights, activations unquantized), run by the WNA16 kernels.

Per linear layer, with K inputs, N outputs, pack = 32 / bits, G groups (K / group_size for the
``group`` strategy, 1 for ``channel``), as compressed-tensors' ``PackedQuantizationCompressor``
writes them (``pack_to_int32``):

  weight_packed      int32 [N, K / pack]   the signed codes q plus 2**(bits - 1), packed along
                                           the input dim, sequential: field j of word c holds
                                           input c * pack + j
  weight_scale       [N, G]                the model's dtype
  weight_zero_point  int32 [N / pack, G]   asymmetric only: the signed zero points plus
                                           2**(bits - 1), packed along the output dim
  weight_g_idx       int32 [K]             ``actorder: group``: the group of each input
  weight_shape       int32 [2]             (N, K)
  W[n, k] = (q[n, k] - zero[n, g(k)]) * scale[n, g(k)]

The stored unsigned values are the internal layout's codes and zero points as they are (the
offsets cancel in q - zero; a symmetric scheme's zero point is the offset itself), so the
repack is a transpose and, with ``actorder``, GPTQ's sort of the rows by group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pagedlm.layers.quantization.base import QuantizationError, WeightLoader, new_param
from pagedlm.layers.quantization.wna16 import (
    WNA16LinearMethod,
    fill_dummy_scales,
    order_rows,
    plan_groups,
    random_codes_int32,
    unpack_along_cols,
    unpack_along_rows,
)


@dataclass(frozen=True)
class WNA16Scheme:
    bits: int  # 4 or 8
    group_size: int  # -1: one group over the input (the ``channel`` strategy)
    symmetric: bool
    actorder: bool  # weight_g_idx stored (``actorder: "group"``)


class CompressedTensorsWNA16Method(WNA16LinearMethod):
    def __init__(self, scheme: WNA16Scheme) -> None:
        super().__init__(bits=scheme.bits, group_size=scheme.group_size)
        self.scheme = scheme
        self.pack = 32 // scheme.bits

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype,
                       weight_loader: WeightLoader) -> None:
        prefix, pack = getattr(layer, "prefix", ""), self.pack
        k, n = input_size_per_partition, sum(output_partition_sizes)
        if k % pack or not self.scheme.symmetric and any(size % pack for size in output_partition_sizes):
            raise QuantizationError(f"{prefix}: {self.bits}-bit pack-quantized weights need input widths per rank "
                                    f"(and, with zero points, output widths) that are multiples of {pack}, got {k} "
                                    f"and {output_partition_sizes}")
        num_groups, sharded_groups = plan_groups(layer, self.group_size, self.scheme.actorder, k, input_size,
                                                 params_dtype)
        group_dims = {"input_dim": 1} if sharded_groups else {}
        loader = {"weight_loader": weight_loader}
        layer.register_parameter("weight_packed", new_param((n, k // pack), torch.int32, output_dim=0, input_dim=1,
                                                            packed_dim=1, pack_factor=pack, **loader))
        layer.register_parameter("weight_scale", new_param((n, num_groups), params_dtype, output_dim=0, **group_dims,
                                                           **loader))
        if not self.scheme.symmetric:
            layer.register_parameter("weight_zero_point", new_param((n // pack, num_groups), torch.int32, output_dim=0,
                                                                    packed_dim=0, pack_factor=pack, **group_dims,
                                                                    **loader))
        if self.scheme.actorder:
            layer.register_parameter("weight_g_idx", new_param((k,), torch.int32, input_dim=0, **loader))
        layer.register_parameter("weight_shape", new_param((2,), torch.int32,
                                                           weight_loader=_shape_loader(prefix, input_size)))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        codes = unpack_along_cols(layer.weight_packed.data, self.bits).t()  # [K, N], unsigned
        scales = layer.weight_scale.data.t()  # [G, N]
        if self.scheme.symmetric:
            zeros = torch.full_like(scales, 2 ** (self.bits - 1), dtype=torch.int32)
        else:
            zeros = unpack_along_rows(layer.weight_zero_point.data, self.bits).t()  # [G, N], unsigned
        g_idx = layer.weight_g_idx.data if self.scheme.actorder else None
        codes, perm, row_groups, group_size = order_rows(layer, codes, g_idx, scales.shape[0], self.group_size)
        dtype = layer.wna16_act_dtype
        self.finish_repack(layer, codes.contiguous(), scales.to(dtype), zeros.to(dtype), perm, row_groups, group_size,
                           drop=("weight_packed", "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape"))

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        for name, param in layer.named_parameters(recurse=False):
            if name in ("weight_packed", "weight_zero_point"):
                param.data.copy_(random_codes_int32(tuple(param.shape), generator))
            elif name == "weight_scale":
                fill_dummy_scales(param, self.bits, generator)
        if self.scheme.actorder:
            rows = torch.arange(layer.weight_g_idx.numel()) + layer.wna16_first_row
            layer.weight_g_idx.data.copy_(rows // layer.wna16_group_size)


def _shape_loader(prefix: str, input_size: int) -> WeightLoader:
    """weight_shape (N, K): K checked against the layer (N is a fused part's or a rank's own)."""

    def load(param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        if loaded_weight.numel() != 2 or int(loaded_weight.reshape(-1)[1]) != input_size:
            raise QuantizationError(f"{prefix}: weight_shape {loaded_weight.tolist()} does not match the layer's "
                                    f"{input_size} inputs")
        param.data.copy_(loaded_weight.reshape(2))

    return load
