from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.kernels import ops


class SiluAndMul(nn.Module):
    """x: [T, 2 * I] -> silu(x[:, :I]) * x[:, I:]"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.silu_and_mul(x)


# HF activation name -> torch's GELU ``approximate`` argument.
_GELU_VARIANTS = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu": "none"}


def gelu_approximation(act: str) -> str:
    """torch's ``approximate`` for a HF GELU activation name; other names are refused."""
    if act not in _GELU_VARIANTS:
        raise ValueError(f"activation {act!r} is not supported (supported GELU variants: {sorted(_GELU_VARIANTS)})")
    return _GELU_VARIANTS[act]


class GeluAndMul(nn.Module):
    """GeGLU (Gemma): x: [T, 2 * I] -> gelu(x[:, :I]) * x[:, I:]. Plain torch on every
    device (one elementwise pass next to the GEMMs around it)."""

    def __init__(self, approximate: str = "tanh") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.gelu(x[..., :d], approximate=self.approximate) * x[..., d:]


class Gelu(nn.Module):
    """Plain GELU (GPT-2's MLP: gelu_new is the tanh approximation)."""

    def __init__(self, approximate: str = "tanh") -> None:
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate=self.approximate)
