from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.config import ConfigError
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


class ReLUSquared(nn.Module):
    """relu(x)^2 (HF ``relu2``: Nemotron, Arcee's ungated MLP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.square(F.relu(x))


class XIELU(nn.Module):
    """xIELU (Apertus; transformers' XIELUActivation, its Python form): with
    a_p = softplus(alpha_p) and a_n = beta + softplus(alpha_n),
    x > 0: a_p x^2 + beta x; else: (expm1(min(x, eps)) - x) a_n + beta x.
    alpha_p / alpha_n / beta / eps are checkpoint tensors (``mlp.act_fn.*``)."""

    def __init__(self, alpha_p_init: float = 0.8, alpha_n_init: float = 0.8, beta: float = 0.5,
                 eps: float = -1e-6) -> None:
        super().__init__()
        from pagedlm.layers.linear import default_weight_loader

        def param(value: torch.Tensor) -> nn.Parameter:
            p = nn.Parameter(value.float(), requires_grad=False)
            p.weight_loader = lambda p_, w, shard_id=None: default_weight_loader(p_, w)  # type: ignore[attr-defined]
            return p

        self.alpha_p = param(torch.log(torch.expm1(torch.tensor(alpha_p_init))).unsqueeze(0))
        self.alpha_n = param(torch.log(torch.expm1(torch.tensor(alpha_n_init - beta))).unsqueeze(0))
        self.beta = param(torch.tensor(beta))
        self.eps = param(torch.tensor(eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.to(x.dtype)
        alpha_p = F.softplus(self.alpha_p).to(x.dtype)
        alpha_n = beta + F.softplus(self.alpha_n).to(x.dtype)
        return torch.where(x > 0, alpha_p * x * x + beta * x,
                           (torch.expm1(torch.minimum(x, self.eps.to(x.dtype))) - x) * alpha_n + beta * x)


def plain_activation(act: str) -> nn.Module:
    """The activation of an ungated MLP (up -> act -> down) from its HF name: relu2, xielu,
    silu, relu or a GELU variant; others are refused."""
    if act == "relu2":
        return ReLUSquared()
    if act == "xielu":
        return XIELU()
    if act == "silu":
        return nn.SiLU()
    if act == "relu":
        return nn.ReLU()
    try:
        return Gelu(gelu_approximation(act))
    except ValueError:
        raise ValueError(f"hidden_act {act!r} is not supported (relu2, xielu, silu, relu or a GELU variant)") from None


# The encoders' activations by their HF names (ModernBERT, NomicBERT, GTE), as plain functions.
_ENCODER_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def encoder_activation(name: str, what: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``name``'s function; ``what`` names the setting in the refusal (e.g. "ModernBERT hidden_activation")."""
    if name not in _ENCODER_ACTIVATIONS:
        raise ConfigError(f"{what} {name!r} is not supported (supported: {sorted(_ENCODER_ACTIVATIONS)})")
    return _ENCODER_ACTIVATIONS[name]
