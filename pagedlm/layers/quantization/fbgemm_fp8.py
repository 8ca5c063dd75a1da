"""``fbgemm_fp8`` checkpoints (transformers' ``FbgemmFp8Config``; Meta's Llama 3.1 405B FP8):
per linear layer ``weight`` float8_e4m3fn [out, in], ``weight_scale`` float32 [out, 1] (per
output channel) and ``input_scale_ub`` float32 (the activations' upper bound); activations
quantized per token at run time with each token's values clamped to +-ub first, as vLLM's
``FBGEMMFp8LinearMethod`` caps the token's scale at ub. ``modules_to_not_convert`` and the LM head
stay unquantized; ``activation_scale_ub`` is the bound where a layer carries none of its own."""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedlm.kernels.quant_reference import FP8_DTYPE
from pagedlm.layers.quantization import register_quantization_config
from pagedlm.layers.quantization.base import QuantizationConfig, QuantizationError, QuantMethod, is_layer_skipped
from pagedlm.layers.quantization.w8a8 import W8LinearMethod, W8Scheme

DEFAULT_ACTIVATION_SCALE_UB = 1200.0  # transformers' FbgemmFp8Config default


@register_quantization_config
class FbgemmFp8Config(QuantizationConfig):
    name = "fbgemm_fp8"

    def __init__(self, ignored: list[str], activation_ub: float) -> None:
        self.ignored = ignored
        self.activation_ub = activation_ub

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "FbgemmFp8Config":
        if not hf_quant_cfg:
            raise QuantizationError("--quantization fbgemm_fp8 needs an fbgemm_fp8 checkpoint (config.json "
                                    "quantization_config); for online quantization use fp8")
        ub = hf_quant_cfg.get("activation_scale_ub", DEFAULT_ACTIVATION_SCALE_UB)
        if isinstance(ub, bool) or not isinstance(ub, (int, float)) or not ub > 0:
            raise QuantizationError(f"fbgemm_fp8 activation_scale_ub must be a positive number, got {ub!r}")
        return cls(list(hf_quant_cfg.get("modules_to_not_convert") or []), float(ub))

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantMethod | None:
        if is_layer_skipped(prefix, ["lm_head", *self.ignored]):
            return None
        return W8LinearMethod(W8Scheme(FP8_DTYPE, weight_per_channel=True, activations="token",
                                       activation_ub=self.activation_ub))
