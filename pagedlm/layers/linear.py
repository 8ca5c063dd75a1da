"""Linear layers with per-parameter weight loaders, tensor-parallel in Megatron style.

Each layer learns (tp_rank, tp_size) from the process-wide parallel state (1 rank when none
is initialised), allocates only its shard, and its ``weight_loader(param, loaded_weight,
shard_id)`` narrows each checkpoint tensor to that shard while loading. Column-parallel
layers split the output dimension (no communication); row-parallel layers split the input
dimension and sum the partial products with one all-reduce. Model code does not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.worker.distributed import (
    divide,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    kv_head_shard,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)


def default_weight_loader(param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    if param.shape != loaded_weight.shape:
        raise ValueError(f"checkpoint tensor has shape {tuple(loaded_weight.shape)}, expected {tuple(param.shape)}")
    param.data.copy_(loaded_weight)


def _make_param(shape: tuple[int, ...], loader) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape), requires_grad=False)
    p.weight_loader = loader  # type: ignore[attr-defined]
    return p


class ReplicatedLinear(nn.Module):
    """y = x W^T (+ b), the full weight on every rank. Also the base of the parallel variants."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.weight = _make_param(self._weight_shape(), self.weight_loader)
        self.bias = _make_param((self._local_output_size(),), self.weight_loader) if bias else None

    def _local_output_size(self) -> int:
        return self.output_size

    def _weight_shape(self) -> tuple[int, int]:
        return (self.output_size, self.input_size)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ColumnParallelLinear(ReplicatedLinear):
    """Output dimension split across tensor-parallel ranks; each rank keeps its slice of the
    output unless ``gather_output``."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, gather_output: bool = False) -> None:
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.gather_output = gather_output
        self.output_size_per_partition = divide(output_size, self.tp_size, f"{type(self).__name__} output size")
        super().__init__(input_size, output_size, bias)

    def _local_output_size(self) -> int:
        return self.output_size_per_partition

    def _weight_shape(self) -> tuple[int, int]:
        return (self.output_size_per_partition, self.input_size)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        size = param.shape[0]
        default_weight_loader(param, loaded_weight.narrow(0, self.tp_rank * size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return tensor_model_parallel_all_gather(y) if self.gather_output else y


class RowParallelLinear(ReplicatedLinear):
    """Input dimension split across tensor-parallel ranks: partial products summed by one
    all-reduce; the (unsplit) bias is added once, after the sum."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, reduce_results: bool = True) -> None:
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.reduce_results = reduce_results
        self.input_size_per_partition = divide(input_size, self.tp_size, f"{type(self).__name__} input size")
        super().__init__(input_size, output_size, bias)

    def _weight_shape(self) -> tuple[int, int]:
        return (self.output_size, self.input_size_per_partition)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        if param.dim() == 2:
            size = param.shape[1]
            loaded_weight = loaded_weight.narrow(1, self.tp_rank * size, size)
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.linear(x, self.weight, self.bias)
        y = F.linear(x, self.weight)
        if self.reduce_results:
            y = tensor_model_parallel_all_reduce(y)
        return y + self.bias if self.bias is not None else y


def _refuse_fused_at_tp(layer: ColumnParallelLinear, param: torch.Tensor, loaded_weight: torch.Tensor) -> None:
    """A checkpoint that stores the fused tensor already: fine on one rank; on several the
    shard layout inside it is ambiguous, so it is refused rather than guessed."""
    if layer.tp_size != 1:
        raise ValueError(f"{type(layer).__name__}: a pre-fused checkpoint tensor cannot be sharded at "
                         f"tensor_parallel_size={layer.tp_size}")
    default_weight_loader(param, loaded_weight)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs stored as one weight, e.g. gate_proj and up_proj:
    each rank holds [its gate slice | its up slice]."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False) -> None:
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias)
        self.local_output_sizes = [divide(s, self.tp_size, "merged output size") for s in output_sizes]

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: int | None = None) -> None:
        if shard_id is None:
            return _refuse_fused_at_tp(self, param, loaded_weight)
        offset = sum(self.local_output_sizes[:shard_id])
        size = self.local_output_sizes[shard_id]
        default_weight_loader(param.data.narrow(0, offset, size), loaded_weight.narrow(0, self.tp_rank * size, size))


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections stored as one weight: [q heads | k heads | v heads] of this
    rank. Query heads are split; KV heads are split too, or replicated when there are more
    ranks than KV heads. ``q_size`` / ``kv_size`` are the local widths."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False) -> None:
        tp_size = get_tensor_model_parallel_world_size()
        tp_rank = get_tensor_model_parallel_rank()
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, tp_size, "num_attention_heads")
        self.num_kv_heads, self.kv_shard = kv_head_shard(num_kv_heads, tp_size, tp_rank)
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        # The local width times tp_size; with replicated KV heads it exceeds the global width.
        super().__init__(hidden_size, (self.q_size + 2 * self.kv_size) * tp_size, bias)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: str | None = None) -> None:
        if shard_id is None:
            return _refuse_fused_at_tp(self, param, loaded_weight)
        offset, size, shard = {
            "q": (0, self.q_size, self.tp_rank),
            "k": (self.q_size, self.kv_size, self.kv_shard),
            "v": (self.q_size + self.kv_size, self.kv_size, self.kv_shard),
        }[shard_id]
        default_weight_loader(param.data.narrow(0, offset, size), loaded_weight.narrow(0, shard * size, size))
