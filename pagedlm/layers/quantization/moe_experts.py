"""A quantized checkpoint's routed MoE experts, dequantized while loading.

pagedlm has no quantized fused-MoE kernel yet, so a quantized MoE checkpoint (AWQ, GPTQ, fp8,
compressed-tensors) runs its attention and dense layers through their linear methods as usual
and its routed experts at the model's dtype (as gpt-oss's MXFP4 experts do,
``mxfp4.py``): memory as a bf16 checkpoint's experts, the checkpoint's values.

Each expert projection's tensors (``...experts.<e>.<proj>.<qweight|scales|weight_scale|...>``)
are collected until the format's set is whole, loaded into a throwaway linear layer of the
format's method (so every format's names, packing and offsets are read by the code that reads
them for linear layers), and replaced by ``<proj>.weight`` = that method's
``dequantized_weight``, which the model's expert loader then takes like a float checkpoint's.
Projections the config leaves unquantized, and online quantization (``--quantization fp8`` on a
float checkpoint, whose experts are float on disk), pass through untouched.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable, Iterator

import torch
from torch import nn

from pagedlm.layers.quantization.base import QuantizationConfig, QuantizationError

logger = logging.getLogger("pagedlm")

_EXPERT_TENSOR = re.compile(r"^(?P<proj>.+\.experts\.\d+\.(?P<name>[^.]+))\.(?P<param>[^.]+)$")


def _throwaway_layer(quant_config: QuantizationConfig, prefix: str, sizes: tuple[int, int]) -> nn.Module | None:
    """The format's linear layer for one expert projection (input, output sizes), on the CPU;
    None when its checkpoint tensors are float (unquantized, or quantized online)."""
    from pagedlm.layers.linear import ReplicatedLinear  # noqa: PLC0415 - linear imports quantization

    layer = ReplicatedLinear(sizes[0], sizes[1], bias=False, quant_config=quant_config, prefix=prefix)
    params = dict(layer.named_parameters(recurse=False))
    if set(params) == {"weight"} and params["weight"].dtype.is_floating_point and params["weight"].element_size() > 1:
        return None
    return layer


def dequantized_experts(weights: Iterable[tuple[str, torch.Tensor]], quant_config: QuantizationConfig,
                        sizes: dict[str, tuple[int, int]]) -> Iterator[tuple[str, torch.Tensor]]:
    """``weights`` with each quantized expert projection's tensors replaced by its float
    ``<proj>.weight`` [out, in]. ``sizes``: the checkpoint's projection names (gate, up, down)
    -> (input size, output size)."""
    layers: dict[str, nn.Module | None] = {}
    pending: dict[str, dict[str, torch.Tensor]] = {}
    count = 0
    for name, tensor in weights:
        match = _EXPERT_TENSOR.match(name)
        if match is None or match["name"] not in sizes:
            yield name, tensor
            continue
        proj, param = match["proj"], match["param"]
        if proj not in layers:
            layers[proj] = _throwaway_layer(quant_config, proj, sizes[match["name"]])
        layer = layers[proj]
        if layer is None or not hasattr(layer, param):
            yield name, tensor  # float experts; or a stray tensor, which the model's loader reports
            continue
        parts = pending.setdefault(proj, {})
        parts[param] = tensor
        if set(parts) == {n for n, _ in layer.named_parameters(recurse=False)}:
            yield f"{proj}.weight", _dequantize(layer, pending.pop(proj))
            layers[proj] = None  # done: a second copy of a tensor would pass to the loader, which refuses it
            count += 1
    if pending:
        proj, parts = next(iter(pending.items()))
        missing = sorted({n for n, _ in layers[proj].named_parameters(recurse=False)} - set(parts))
        raise QuantizationError(f"{proj}: the checkpoint has {sorted(parts)} of this quantized expert but not "
                                f"{missing}")
    if count:
        logger.info("Dequantized %d MoE expert projections (%s) to the model dtype: pagedlm has no quantized "
                    "fused-MoE kernel, so the experts take their unquantized size in memory", count, quant_config.name)


def _dequantize(layer: nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    for param_name, tensor in tensors.items():
        param = getattr(layer, param_name)
        loader = getattr(param, "weight_loader", None)
        if loader is None:
            param.data.copy_(tensor)
        else:
            loader(param, tensor)
    layer.quant_method.process_weights_after_loading(layer)
    return layer.quant_method.dequantized_weight(layer)
