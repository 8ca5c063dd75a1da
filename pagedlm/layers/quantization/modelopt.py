"""NVIDIA TensorRT Model Optimizer (ModelOpt) FP8 checkpoints (``quant_method: modelopt``, e.g.
``nvidia/*-FP8``): ``quant_algo`` ``FP8`` is per-tensor fp8 weights (``weight``,
``weight_scale``) with static per-tensor activation scales (``input_scale``), the HF ``fp8``
format's static scheme; ``FP8_PER_CHANNEL_PER_TOKEN`` has per-channel weight scales and
dynamic per-token activations. ``exclude_modules`` (names, or ``*`` wildcards as ModelOpt
writes them) and the LM head stay unquantized; fp8 KV-cache scales (``k_proj.k_scale``) are
read by the loader's KV-scale pass. Other algorithms (NVFP4, W4A8 AWQ, ...) are refused. The
older exports' ``hf_quant_config.json`` beside config.json (``{"quantization": {...}}``) is
read as this config when config.json has no quantization_config (``config.load_hf_config``)."""

from __future__ import annotations

import fnmatch
from typing import Any

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

_SCHEMES = {
    "FP8": W8Scheme(FP8_DTYPE, weight_per_channel=False, activations="static"),
    "FP8_PER_CHANNEL_PER_TOKEN": W8Scheme(FP8_DTYPE, weight_per_channel=True, activations="token"),
}


def _excluded(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) if "*" in pattern or "?" in pattern else matches_name(pattern, name)


@register_quantization_config
class ModelOptConfig(QuantizationConfig):
    name = "modelopt"

    def __init__(self, scheme: W8Scheme, excluded: list[str]) -> None:
        self.scheme = scheme
        self.excluded = excluded

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "ModelOptConfig":
        if not hf_quant_cfg:
            raise QuantizationError("--quantization modelopt needs a ModelOpt checkpoint (config.json "
                                    "quantization_config with quant_method 'modelopt')")
        cfg = hf_quant_cfg.get("quantization", hf_quant_cfg)  # hf_quant_config.json nests it
        algo = cfg.get("quant_algo")
        if algo not in _SCHEMES:
            raise QuantizationError(f"ModelOpt quant_algo {algo!r} is not supported; pagedlm runs {sorted(_SCHEMES)}")
        return cls(_SCHEMES[algo], list(cfg.get("exclude_modules") or []))

    def _scheme_for(self, name: str) -> W8Scheme | None:
        excluded = name.split(".")[-1] == "lm_head" or any(_excluded(p, name) for p in self.excluded)
        return None if excluded else self.scheme

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantMethod | None:
        scheme = fused_scheme(prefix, self._scheme_for)
        return W8LinearMethod(scheme) if scheme is not None else None
