from __future__ import annotations

import torch
from torch import nn

from pagedlm.kernels import ops
from pagedlm.layers.linear import default_weight_loader


class RMSNorm(nn.Module):
    """RMSNorm; with ``residual`` given, fuses the residual add: returns (normed, new residual)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.weight.weight_loader = lambda p, w, shard_id=None: default_weight_loader(p, w)  # type: ignore[attr-defined]

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)
