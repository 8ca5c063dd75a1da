"""8-bit weights (fp8 e4m3 or int8) with per-channel or per-tensor scales, and activations
quantized per token (dynamic), per tensor (dynamic or the checkpoint's static scale), or not
at all (W8A16). The one linear method behind the ``fp8`` and ``compressed-tensors`` formats.

After loading, every layer holds ``weight`` [N, K] (row-major, read as the [K, N]
column-major view the GEMMs want), ``weight_scale`` [1, N] float32 (per-tensor scales of
fused parts expanded per channel: exact, no requantization), and for static activations
``input_scale`` [1, 1] (the largest of the fused parts' scales, as vLLM does); a scheme with an
activation upper bound (``fbgemm_fp8``) holds ``input_scale_ub`` [1, 1] and clamps each
token's activations to it before quantizing (the same codes as capping the token's scale at
ub / fp8 max, as vLLM's ``scale_ub`` does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from pagedlm.kernels import quant_reference as ref
from pagedlm.kernels.quant_ops import REFERENCE_OPS, QuantOps, gemm_for, quant_ops
from pagedlm.kernels.scaled_gemv import scaled_gemv_or_none
from pagedlm.layers.quantization.activation_codes import ActivationCodes
from pagedlm.layers.quantization.base import QuantMethod, WeightLoader, fill_uniform, new_param, replace_param

logger = logging.getLogger("pagedlm")

ACTIVATION_SCHEMES = (None, "token", "tensor", "static")


@dataclass(frozen=True)
class W8Scheme:
    weight_dtype: torch.dtype  # torch.float8_e4m3fn or torch.int8
    weight_per_channel: bool  # checkpoint weight_scale [N, 1]; else one scalar per checkpoint layer
    # None: weights only (W8A16); "token" / "tensor": dynamic per token / per tensor;
    # "static": the checkpoint's per-tensor input_scale.
    activations: str | None
    online: bool = False  # the checkpoint's weights are float, quantized per channel while loading
    # per-token activations clamped to +-ub first (fbgemm_fp8's activation_scale_ub, the default
    # of the checkpoint's per-layer input_scale_ub)
    activation_ub: float | None = None

    def __post_init__(self) -> None:
        if self.activations not in ACTIVATION_SCHEMES:
            raise ValueError(f"activations must be one of {ACTIVATION_SCHEMES}, got {self.activations!r}")

    @property
    def is_fp8(self) -> bool:
        return self.weight_dtype == ref.FP8_DTYPE


_fallback_logged = False


def _log_fp8_fallback() -> None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        logger.warning("this GPU has no fp8 GEMM (compute capability < 8.9): fp8 weights run as W8A16 "
                       "(dequantized to the activation dtype, activations unquantized)")


class W8LinearMethod(QuantMethod):
    def __init__(self, scheme: W8Scheme) -> None:
        self.scheme = scheme
        self.ops: QuantOps | None = None
        self.gemm = None  # picked after loading, by device and shape
        self.weight_only = scheme.activations is None

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype,
                       weight_loader: WeightLoader) -> None:
        s, n, parts = self.scheme, sum(output_partition_sizes), len(output_partition_sizes)
        layer.logical_widths = list(output_partition_sizes)
        weight_dtype = params_dtype if s.online else s.weight_dtype
        layer.register_parameter("weight", new_param((n, input_size_per_partition), weight_dtype, output_dim=0,
                                                     input_dim=1, weight_loader=weight_loader))
        if s.online:
            return
        if s.weight_per_channel:
            scale = new_param((n, 1), torch.float32, output_dim=0, weight_loader=weight_loader)
        else:
            scale = new_param((parts,), torch.float32, shard_indexed=True, weight_loader=weight_loader)
        layer.register_parameter("weight_scale", scale)
        if s.activations == "static":
            layer.register_parameter("input_scale", new_param((parts,), torch.float32, shard_indexed=True,
                                                              weight_loader=weight_loader))
        if s.activation_ub is not None:
            ub = new_param((parts,), torch.float32, shard_indexed=True, weight_loader=weight_loader)
            ub.data.fill_(s.activation_ub)
            layer.register_parameter("input_scale_ub", ub)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        s = self.scheme
        if s.online:  # per output channel = per row of [N, K]
            weight, scale = ref.per_token_quant(layer.weight.data, s.weight_dtype)
            replace_param(layer, "weight", weight.contiguous())
        else:
            scale = layer.weight_scale.data.float()
            if not s.weight_per_channel:
                widths = torch.tensor(layer.logical_widths, device=scale.device)
                scale = scale.repeat_interleave(widths)
        replace_param(layer, "weight_scale", scale.reshape(1, -1).float().contiguous())
        if s.activations == "static":
            replace_param(layer, "input_scale", layer.input_scale.data.float().max().reshape(1, 1))
        if s.activation_ub is not None:
            replace_param(layer, "input_scale_ub", layer.input_scale_ub.data.float().max().reshape(1, 1))
        self.ops = quant_ops(layer.weight.device)
        self.gemm = gemm_for(self.ops, s.is_fp8, layer.weight.shape[1], layer.weight.shape[0])
        if s.is_fp8 and not self.ops.fp8_gemm and not self.weight_only:
            _log_fp8_fallback()
            self.weight_only = True

    def dequantized_weight(self, layer: nn.Module) -> torch.Tensor:
        return layer.weight.float() * layer.weight_scale.reshape(-1, 1)

    def _quantize_input(self, x: torch.Tensor, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        ops, dtype = self.ops, self.scheme.weight_dtype
        if self.scheme.activations == "token":
            if self.scheme.activation_ub is not None:
                ub = layer.input_scale_ub.to(x.dtype)
                x = torch.clamp(x, -ub, ub)
            return ops.per_token_quant(x, dtype)
        if self.scheme.activations == "tensor":
            return ops.per_tensor_quant(x, dtype)
        return ops.per_tensor_quant(x, dtype, layer.input_scale)

    def input_codes_dtype(self, layer: nn.Module) -> torch.dtype | None:
        """Dynamic per-token activations: a producer may hand over the codes (fp8 / int8); not
        with an activation upper bound, which the layer applies itself."""
        if self.weight_only or self.scheme.activations != "token" or self.scheme.activation_ub is not None:
            return None
        return self.scheme.weight_dtype

    def apply(self, layer: nn.Module, x: "torch.Tensor | ActivationCodes",
              bias: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(x, ActivationCodes):  # quantized by the producer (see input_codes_dtype)
            return self._apply_codes(layer, x, bias)
        x2 = x.reshape(-1, x.shape[-1])  # [num_tokens, K]
        weight_t = layer.weight.t()  # [K, N] column-major view
        if self.weight_only:
            a, a_scale = x2, None

            def gemm(a, a_scale, bias=None):
                return self.ops.weight_only_mm(a, weight_t, layer.weight_scale, bias)
        else:
            a, a_scale = self._quantize_input(x2, layer)

            def gemm(a, a_scale, bias=None):
                return self.gemm(a, weight_t, a_scale, layer.weight_scale, x.dtype, bias)
        y = None
        if self.ops is not REFERENCE_OPS:  # decode batches: the 8-bit GEMV where it beats the GEMM
            y = scaled_gemv_or_none(a, layer.weight, a_scale, layer.weight_scale, x.dtype, bias, gemm)
        if y is None:
            y = gemm(a, a_scale, bias)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    def _apply_codes(self, layer: nn.Module, x: ActivationCodes, bias: torch.Tensor | None) -> torch.Tensor:
        a, a_scale = x.codes, x.scale

        def gemm(a, a_scale, bias=None):
            return self.gemm(a, layer.weight.t(), a_scale, layer.weight_scale, x.dtype, bias)

        y = None
        if self.ops is not REFERENCE_OPS:
            y = scaled_gemv_or_none(a, layer.weight, a_scale, layer.weight_scale, x.dtype, bias, gemm)
        return y if y is not None else gemm(a, a_scale, bias)

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        """Codes spread over half the 8-bit range with scales that put the weights in about
        (-0.05, 0.05), like the float dummy weights; static input scales of 0.05."""
        s = self.scheme
        if s.online:
            return super().init_dummy(layer, generator)
        limit = ref.qmax(s.weight_dtype) / 2
        codes = torch.rand(layer.weight.shape, generator=generator, device=generator.device) * (2 * limit) - limit
        layer.weight.data.copy_(ref.quantize_with_scale(codes, torch.ones((), device=codes.device), s.weight_dtype))
        fill_uniform(layer.weight_scale, 0.04 / limit, 0.06 / limit, generator)
        if s.activations == "static":
            layer.input_scale.data.fill_(0.05)
