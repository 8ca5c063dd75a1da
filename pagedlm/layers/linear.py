"""Linear layers with per-parameter weight loaders.

Fused projections (QKV, gate/up) load each checkpoint tensor into its slice of the fused
weight through ``weight_loader(param, loaded_weight, shard_id)``. Tensor parallelism will
slice ``loaded_weight`` by rank in these loaders; model code does not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    if param.shape != loaded_weight.shape:
        raise ValueError(f"checkpoint tensor has shape {tuple(loaded_weight.shape)}, expected {tuple(param.shape)}")
    param.data.copy_(loaded_weight)


def _make_param(shape: tuple[int, ...], loader) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape), requires_grad=False)
    p.weight_loader = loader  # type: ignore[attr-defined]
    return p


class ReplicatedLinear(nn.Module):
    """y = x W^T (+ b). Also the base of the fused and parallel variants."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.weight = _make_param((output_size, input_size), self.weight_loader)
        self.bias = _make_param((output_size,), self.weight_loader) if bias else None

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ColumnParallelLinear(ReplicatedLinear):
    """Output dimension split across tensor-parallel ranks (one rank today)."""


class RowParallelLinear(ReplicatedLinear):
    """Input dimension split across tensor-parallel ranks (one rank today)."""


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs stored as one weight, e.g. gate_proj and up_proj."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False) -> None:
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: int | None = None) -> None:
        if shard_id is None:
            return default_weight_loader(param, loaded_weight)
        offset = sum(self.output_sizes[:shard_id])
        size = self.output_sizes[shard_id]
        default_weight_loader(param.data.narrow(0, offset, size), loaded_weight)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections stored as one weight: [q heads | k heads | v heads]."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False) -> None:
        self.q_size = num_heads * head_dim
        self.kv_size = num_kv_heads * head_dim
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: str | None = None) -> None:
        if shard_id is None:
            return default_weight_loader(param, loaded_weight)
        offset, size = {
            "q": (0, self.q_size),
            "k": (self.q_size, self.kv_size),
            "v": (self.q_size + self.kv_size, self.kv_size),
        }[shard_id]
        default_weight_loader(param.data.narrow(0, offset, size), loaded_weight)
