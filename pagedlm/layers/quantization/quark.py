"""AMD Quark checkpoints (``quant_method: quark``, e.g. ``amd/*-FP8-KV``) with 8-bit weights:
``global_quant_config`` (``weight`` and ``input_tensors``: ``dtype`` ``fp8_e4m3`` or ``int8``,
``qscheme`` ``per_tensor`` or ``per_channel``, ``is_dynamic``, ``symmetric``), per-layer
overrides in ``layer_quant_config`` (keys: module names or ``*`` wildcards), and ``exclude``
(names or wildcards; the LM head always stays unquantized). Per linear layer ``weight``,
``weight_scale`` (scalar, or [out, 1] per channel) and, with static activations,
``input_scale``; fp8 KV-cache scales (``k_proj.output_scale``) are read by the loader's KV-scale
pass. Runs what vLLM's Quark schemes run: fp8 weights with per-tensor fp8 activations (static
or dynamic) and int8 weights with static per-tensor int8 activations, or either weight type
with unquantized activations (W8A16), through the 8-bit linear method (``w8a8.py``); other
schemes (int4 / fp4 / mx formats, group or block scales, asymmetric, output quantization) are
refused with the reason."""

from __future__ import annotations

import fnmatch
from typing import Any

import torch
from torch import nn

from pagedlm.kernels.quant_reference import FP8_DTYPE
from pagedlm.layers.quantization import register_quantization_config
from pagedlm.layers.quantization.base import (
    QuantizationConfig,
    QuantizationError,
    QuantMethod,
    fused_scheme,
    matches_name,
)
from pagedlm.layers.quantization.w8a8 import W8LinearMethod, W8Scheme

_DTYPES = {"fp8_e4m3": FP8_DTYPE, "int8": torch.int8}


def _refuse(what: str) -> QuantizationError:
    return QuantizationError(f"quark: {what} is not supported (pagedlm runs 8-bit fp8_e4m3 / int8 weights per tensor "
                             "or per channel, with per-tensor 8-bit or unquantized activations)")


def _scheme(layer_config: dict[str, Any]) -> W8Scheme | None:
    """A Quark layer config -> the 8-bit scheme; None where it quantizes no weight."""
    weight, inputs = layer_config.get("weight"), layer_config.get("input_tensors")
    if layer_config.get("output_tensors"):
        raise _refuse("output tensor quantization")
    if not weight:
        if inputs:
            raise _refuse("activations quantized over unquantized weights")
        return None
    dtype = _DTYPES.get(weight.get("dtype"))
    if dtype is None:
        raise _refuse(f"{weight.get('dtype')!r} weights")
    if weight.get("qscheme") not in ("per_tensor", "per_channel") or weight.get("is_dynamic"):
        raise _refuse(f"weight qscheme {weight.get('qscheme')!r}" + (" (dynamic)" if weight.get("is_dynamic") else ""))
    if weight.get("symmetric") is False:
        raise _refuse("asymmetric weights")
    if not inputs:
        activations = None
    else:
        if _DTYPES.get(inputs.get("dtype")) != dtype or inputs.get("qscheme") != "per_tensor":
            raise _refuse(f"input tensors {inputs.get('dtype')!r} {inputs.get('qscheme')!r} with "
                          f"{weight.get('dtype')} weights")
        if inputs.get("symmetric") is False:
            raise _refuse("asymmetric activations")
        dynamic = bool(inputs.get("is_dynamic"))
        if dynamic and dtype != FP8_DTYPE:
            raise _refuse("dynamic int8 activations")
        activations = "tensor" if dynamic else "static"
    return W8Scheme(dtype, weight_per_channel=weight["qscheme"] == "per_channel", activations=activations)


def _matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) if any(c in pattern for c in "*?[") else matches_name(pattern, name)


@register_quantization_config
class QuarkConfig(QuantizationConfig):
    name = "quark"

    def __init__(self, global_scheme: W8Scheme | None, layer_schemes: dict[str, W8Scheme | None],
                 exclude: list[str]) -> None:
        self.global_scheme = global_scheme
        self.layer_schemes = layer_schemes
        self.exclude = exclude

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "QuarkConfig":
        if not hf_quant_cfg:
            raise QuantizationError("--quantization quark needs a Quark checkpoint (config.json quantization_config "
                                    "with quant_method 'quark')")
        if hf_quant_cfg.get("layer_type_quant_config"):
            raise _refuse("layer_type_quant_config (per module type schemes)")
        if (hf_quant_cfg.get("export") or {}).get("weight_format", "real_quantized") != "real_quantized":
            raise _refuse(f"export weight_format {hf_quant_cfg['export'].get('weight_format')!r}")
        layers = {name: _scheme(cfg) for name, cfg in (hf_quant_cfg.get("layer_quant_config") or {}).items()}
        return cls(_scheme(hf_quant_cfg.get("global_quant_config") or {}), layers,
                   list(hf_quant_cfg.get("exclude") or []))

    def _scheme_for(self, name: str) -> W8Scheme | None:
        if name.split(".")[-1] == "lm_head" or any(_matches(p, name) for p in self.exclude):
            return None
        for pattern, scheme in self.layer_schemes.items():
            if _matches(pattern, name):
                return scheme
        return self.global_scheme

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantMethod | None:
        scheme = fused_scheme(prefix, self._scheme_for)
        return W8LinearMethod(scheme) if scheme is not None else None
