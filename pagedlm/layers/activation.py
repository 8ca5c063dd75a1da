from __future__ import annotations

import torch
from torch import nn

from pagedlm.kernels import ops


class SiluAndMul(nn.Module):
    """x: [T, 2 * I] -> silu(x[:, :I]) * x[:, I:]"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.silu_and_mul(x)
