"""Block-wise fp8 checkpoints (``quant_method: fp8`` with ``weight_block_size: [bn, bk]``), as
Qwen's own ``*-FP8`` releases and DeepSeek-V3 ship: per linear layer ``weight`` float8_e4m3fn
[out, in] and ``weight_scale_inv`` float32 [ceil(out / bn), ceil(in / bk)], one scale per
[bn, bk] block of the weight (W = code * scale; "inv" is the checkpoint's name for it).

These layers run **W8A16**: the weight stays fp8 in memory, activations unquantized — the
checkpoint's weights exactly. On a GPU, batches of up to 1,024 rows read the fp8 codes once,
through the one-launch GEMV (up to 8 rows; the block scales folded into the activations) or a
tiled block-scaled GEMM (``pagedlm/kernels/block_fp8_linear.py``, where one beats the
alternative for the shape); everything else (and the CPU) dequantizes the weight to the
activation dtype per call (one fused multiply per block of codes, then the dense GEMM: the
dequantized copy is written and read on every call). No fp8 tensor-core GEMM: vLLM quantizes
the activations per 128-wide group on Hopper; the logprobs differ by that rounding.

llm-compressor's block strategy (compressed-tensors ``float-quantized`` with ``strategy: block``
and ``block_structure``) stores the same tensors with the scales named ``weight_scale``; it runs
here the same way (its per-group activation quantization is not applied: W8A16).

Fused layers (q/k/v, gate/up) and tensor-parallel shards keep whole blocks: every part's
output width and each rank's input width must be multiples of the block (true of the
checkpoints that use it: 128 x 128 blocks over 128-wide heads); others are refused. A layer
whose output is one part on every rank may end in a partial block, as may an input no rank
splits (DeepSeek-V3's kv_a_proj_with_mqa: 576 = 4.5 blocks of 128 rows); the scales then
cover ceil(out / bn) x ceil(in / bk) blocks, as the checkpoint stores them.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.kernels.quant_reference import FP8_DTYPE, FP8_MAX
from pagedlm.kernels.block_fp8_linear import block_fp8_linear
from pagedlm.layers.quantization.base import QuantizationError, QuantMethod, WeightLoader, fill_uniform, new_param
from pagedlm.logger import log_once

logger = logging.getLogger("pagedlm")


class BlockFp8LinearMethod(QuantMethod):
    def __init__(self, block: tuple[int, int], scale_name: str = "weight_scale_inv") -> None:
        self.block = block
        self.scale_name = scale_name  # the checkpoint's name (compressed-tensors': weight_scale)

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype,
                       weight_loader: WeightLoader) -> None:
        bn, bk = self.block
        n = sum(output_partition_sizes)
        # a partial last block only where no part or rank boundary falls inside a block
        whole_output = len(output_partition_sizes) == 1 and n == output_size
        ragged = [size for size in output_partition_sizes if size % bn and not whole_output]
        if ragged or input_size_per_partition % bk and input_size_per_partition != input_size:
            raise QuantizationError(
                f"{getattr(layer, 'prefix', '') or 'a linear layer'}: block-wise fp8 needs whole {bn} x {bk} blocks "
                f"per part and rank (output widths {output_partition_sizes}, input width {input_size_per_partition});"
                " use a smaller tensor_parallel_size")
        layer.register_parameter("weight", new_param((n, input_size_per_partition), FP8_DTYPE, output_dim=0,
                                                     input_dim=1, weight_loader=weight_loader))
        # One row of scales per bn output rows: a fused part's offset and width in blocks.
        layer.register_parameter(self.scale_name, new_param((-(-n // bn), -(-input_size_per_partition // bk)),
                                                               torch.float32, output_dim=0, input_dim=1, packed_dim=0,
                                                               pack_factor=bn, weight_loader=weight_loader))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        how = ("batches of up to 1,024 rows read them through block-scaled kernels where those win, larger "
               "ones dequantize them per call" if layer.weight.is_cuda else "dequantized per call")
        log_once(logger, logging.WARNING, "block-wise fp8 (weight_block_size %s) runs as W8A16: the weights stay "
                 "fp8, %s", self.block, how)

    def _dequantize(self, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        bn, bk = self.block
        w, scale = layer.weight, getattr(layer, self.scale_name)
        n, k = w.shape
        if n % bn or k % bk:  # a partial last block: each weight's scale spelled out
            return w.to(dtype) * scale.to(dtype).repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
        blocks = w.view(n // bn, bn, k // bk, bk).to(dtype) * scale.to(dtype)[:, None, :, None]
        return blocks.view(n, k)

    def dequantized_weight(self, layer: nn.Module) -> torch.Tensor:
        return self._dequantize(layer, torch.float32)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.is_cuda:  # up to 1,024 rows: a block-scaled GEMV / GEMM where one wins
            x2 = x.reshape(-1, x.shape[-1])
            y = block_fp8_linear(x2, layer.weight, getattr(layer, self.scale_name), self.block, bias,
                                 lambda a: F.linear(a, self._dequantize(layer, a.dtype)))
            if y is not None:
                return y.reshape(*x.shape[:-1], y.shape[-1])
        return F.linear(x, self._dequantize(layer, x.dtype), bias)

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        """Codes over the fp8 range, block scales that keep weights near +-0.05."""
        codes = torch.empty(layer.weight.shape, dtype=torch.float32, device=layer.weight.device)
        fill_uniform(codes, -FP8_MAX, FP8_MAX, generator)
        layer.weight.data.copy_(codes.to(FP8_DTYPE))
        fill_uniform(getattr(layer, self.scale_name), 0.04 / FP8_MAX, 0.06 / FP8_MAX, generator)
