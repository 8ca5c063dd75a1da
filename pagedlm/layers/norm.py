from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.kernels import ops
from pagedlm.layers.linear import default_weight_loader
from pagedlm.layers.quantization.activation_codes import ActivationCodes


class RMSNorm(nn.Module):
    """RMSNorm; with ``residual`` given, fuses the residual add: returns (normed, new residual).

    ``unit_offset``: the checkpoint stores w and the norm multiplies by (1 + w) (Gemma). The
    loader stores 1 + w once, so the forward is the plain kernel."""

    emits_codes = True  # ``codes_dtype``: the next layer's input quantized in the same kernel

    def __init__(self, hidden_size: int, eps: float = 1e-6, unit_offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        if self.unit_offset:
            # (1 + w) in float32 first, as Gemma's norm computes it, then one rounding to the model dtype
            loaded_weight = loaded_weight.float() + 1.0
        default_weight_loader(param, loaded_weight)

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, codes_dtype: torch.dtype | None = None
    ) -> Any:
        """``codes_dtype``: the next layer takes its input quantized per token to this 8-bit
        type (``ActivationCodes``), so the norm emits the codes in the same launch."""
        if codes_dtype is not None:
            return self._forward_codes(x, residual, codes_dtype)
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)

    def _forward_codes(self, x: torch.Tensor, residual: torch.Tensor | None,
                       codes_dtype: torch.dtype) -> ActivationCodes | tuple[ActivationCodes, torch.Tensor]:
        out_dtype = torch.result_type(x, self.weight) if x.dtype == torch.float32 else x.dtype
        if residual is None:
            return ActivationCodes(*ops.rms_norm_quant(x, self.weight, self.eps, codes_dtype), out_dtype)
        codes, scale, residual = ops.fused_add_rms_norm_quant(x, residual, self.weight, self.eps, codes_dtype)
        return ActivationCodes(codes, scale, out_dtype), residual


class LayerNorm(nn.LayerNorm):
    """LayerNorm with weight and bias (GPT-2), loadable through weight_loader.

    ``unit_offset``: the checkpoint stores w and the norm multiplies by (1 + w) (Nemotron's
    LayerNorm1P); the loader stores 1 + w. With ``residual`` given the forward adds it first,
    as RMSNorm does: returns (normed, new residual)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, unit_offset: bool = False) -> None:
        super().__init__(hidden_size, eps=eps)
        self.unit_offset = unit_offset
        for p in (self.weight, self.bias):
            p.requires_grad_(False)
            p.weight_loader = lambda param, w, shard_id=None: default_weight_loader(param, w)  # type: ignore[attr-defined]
        self.weight.weight_loader = self._weight_loader  # type: ignore[attr-defined]

    def _weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        if self.unit_offset:
            loaded_weight = loaded_weight.float() + 1.0
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> Any:
        if residual is not None:
            x = x + residual
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps), x
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
