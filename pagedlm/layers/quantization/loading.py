"""What the model loader does for quantized layers: dummy values per method, the format's
extra checkpoint tensors, and the post-load pass (``process_weights_after_loading``)."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import nn

from pagedlm.layers.quantization.base import QuantizationConfig, QuantizationError
from pagedlm.layers.quantization.unquantized import UnquantizedLinearMethod


def quantized_layers(model: nn.Module) -> list[nn.Module]:
    """Layers whose parameters a non-default QuantMethod owns."""
    return [m for m in model.modules()
            if getattr(m, "quant_method", None) is not None
            and not isinstance(m.quant_method, UnquantizedLinearMethod)]


def verify_model_supports(model_cls: type, quant_config: QuantizationConfig | None) -> None:
    if quant_config is not None and not getattr(model_cls, "supports_quantization", False):
        raise QuantizationError(f"{model_cls.__name__} does not support quantization ({quant_config.name}) yet; "
                                "use an unquantized checkpoint and no --quantization")


def init_dummy_quantized(model: nn.Module, seed: int) -> set[int]:
    """Fill the quantized layers' parameters with valid random values (codes and sane scales);
    returns the ids of the parameters filled, which the plain dummy init then leaves alone."""
    generators: dict[torch.device, torch.Generator] = {}
    filled: set[int] = set()
    for layer in quantized_layers(model):
        device = next(layer.parameters()).device
        if device not in generators:
            generators[device] = torch.Generator(device=device).manual_seed(seed + 1)
        layer.quant_method.init_dummy(layer, generators[device])
        filled.update(id(p) for name, p in layer.named_parameters(recurse=False) if name != "bias")
    return filled


def drop_format_tensors(weights: Iterable[tuple[str, torch.Tensor]],
                        quant_config: QuantizationConfig | None) -> Iterator[tuple[str, torch.Tensor]]:
    for name, tensor in weights:
        if quant_config is None:
            yield name, tensor
        elif not quant_config.skip_checkpoint_tensor(name):
            yield quant_config.checkpoint_tensor_name(name), tensor


def process_weights_after_loading(model: nn.Module) -> None:
    for layer in quantized_layers(model):
        layer.quant_method.process_weights_after_loading(layer)
