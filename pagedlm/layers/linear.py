"""Linear layers with per-parameter weight loaders, tensor-parallel in Megatron style.

Each layer learns (tp_rank, tp_size) from the process-wide parallel state (1 rank when none
is initialised), allocates only its shard, and its ``weight_loader(param, loaded_weight,
shard_id)`` narrows each checkpoint tensor to that shard while loading. Column-parallel
layers split the output dimension (no communication); row-parallel layers split the input
dimension and sum the partial products with one all-reduce. Model code does not change.

Parameters are created by the layer's ``QuantMethod`` (pagedlm/layers/quantization/base.py),
picked from the model's quantization config by the layer's ``prefix`` (its module path, e.g.
``model.layers.0.self_attn.qkv_proj``); unquantized is one method among others. The loaders
below know nothing of formats: they narrow each checkpoint tensor along the dims each
parameter declares (``output_dim``, ``input_dim``, ``packed_dim``/``pack_factor``,
``shard_indexed``).
"""

from __future__ import annotations

import torch
from torch import nn

from pagedlm.layers.quantization.base import QuantizationConfig, QuantMethod, set_weight_attrs
from pagedlm.layers.quantization.unquantized import UnquantizedLinearMethod
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
        # A per-tensor scale may be saved as a scalar or as [1].
        if not (param.numel() == loaded_weight.numel() == 1):
            raise ValueError(f"checkpoint tensor has shape {tuple(loaded_weight.shape)}, "
                             f"expected {tuple(param.shape)}")
        loaded_weight = loaded_weight.reshape(param.shape)
    param.data.copy_(loaded_weight)


def _make_param(shape: tuple[int, ...], loader, **attrs) -> nn.Parameter:
    p = nn.Parameter(torch.empty(shape), requires_grad=False)
    set_weight_attrs(p, {"weight_loader": loader, **attrs})
    return p


def _narrow_to_rank(param: torch.Tensor, loaded_weight: torch.Tensor, dim_attr: str, rank: int) -> torch.Tensor:
    """This rank's slice of a checkpoint tensor along the parameter's ``dim_attr`` dim (none: whole)."""
    dim = getattr(param, dim_attr, None)
    if dim is None:
        return loaded_weight
    size = param.shape[dim]
    return loaded_weight.narrow(dim, rank * size, size)


class ReplicatedLinear(nn.Module):
    """y = x W^T (+ b), the full weight on every rank. Also the base of the parallel variants."""

    tp_rank = 0
    tp_size = 1

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.prefix = prefix
        method = quant_config.get_quant_method(self, prefix) if quant_config is not None else None
        self.quant_method: QuantMethod = method or UnquantizedLinearMethod()
        self.quant_method.create_weights(self, self._input_size_per_partition(), self._output_partition_sizes(),
                                         input_size, output_size, torch.get_default_dtype(), self.weight_loader)
        self.bias = _make_param((self._local_output_size(),), self.weight_loader, **self._bias_attrs()) \
            if bias else None

    def _input_size_per_partition(self) -> int:
        return self.input_size

    def _output_partition_sizes(self) -> list[int]:
        return [self._local_output_size()]

    def _local_output_size(self) -> int:
        return self.output_size

    def _bias_attrs(self) -> dict:
        return {}

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, loaded_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)

    def input_codes_dtype(self) -> torch.dtype | None:
        """The 8-bit type this layer also takes its input in, quantized per token by the
        producer (``ActivationCodes``); None: float activations only."""
        return self.quant_method.input_codes_dtype(self)


class ColumnParallelLinear(ReplicatedLinear):
    """Output dimension split across tensor-parallel ranks; each rank keeps its slice of the
    output unless ``gather_output``."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, gather_output: bool = False,
                 quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.gather_output = gather_output
        self.output_size_per_partition = divide(output_size, self.tp_size, f"{type(self).__name__} output size")
        super().__init__(input_size, output_size, bias, quant_config, prefix)

    def _local_output_size(self) -> int:
        return self.output_size_per_partition

    def _bias_attrs(self) -> dict:
        return {"output_dim": 0}

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, _narrow_to_rank(param, loaded_weight, "output_dim", self.tp_rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.quant_method.apply(self, x, self.bias)
        return tensor_model_parallel_all_gather(y) if self.gather_output else y


class RowParallelLinear(ReplicatedLinear):
    """Input dimension split across tensor-parallel ranks: partial products summed by one
    all-reduce; the (unsplit) bias is added once, after the sum."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, reduce_results: bool = True,
                 quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.reduce_results = reduce_results
        self.input_size_per_partition = divide(input_size, self.tp_size, f"{type(self).__name__} input size")
        super().__init__(input_size, output_size, bias, quant_config, prefix)

    def _input_size_per_partition(self) -> int:
        return self.input_size_per_partition

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, _narrow_to_rank(param, loaded_weight, "input_dim", self.tp_rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.quant_method.apply(self, x, self.bias)
        y = self.quant_method.apply(self, x)
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


def _load_fused_part(param: torch.Tensor, loaded_weight: torch.Tensor, index: int, offset: int, size: int,
                     shard_rank: int) -> None:
    """Part ``index`` of a fused layer: the rows [shard_rank * size, +size) of the checkpoint
    tensor go to [offset, +size) of the parameter along its output dim (logical units)."""
    if getattr(param, "shard_indexed", False):  # one per-tensor value per part
        return default_weight_loader(param.data[index:index + 1], loaded_weight)
    dim = getattr(param, "output_dim", None)
    if dim is None:  # the same for every output feature (e.g. g_idx): copied whole
        return default_weight_loader(param, loaded_weight)
    if getattr(param, "packed_dim", None) == dim:
        offset, size = offset // param.pack_factor, size // param.pack_factor
    default_weight_loader(param.data.narrow(dim, offset, size), loaded_weight.narrow(dim, shard_rank * size, size))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs stored as one weight, e.g. gate_proj and up_proj:
    each rank holds [its gate slice | its up slice]."""

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False,
                 quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        self.output_sizes = output_sizes
        tp_size = get_tensor_model_parallel_world_size()
        self.local_output_sizes = [divide(s, tp_size, "merged output size") for s in output_sizes]
        super().__init__(input_size, sum(output_sizes), bias, quant_config=quant_config, prefix=prefix)

    def _output_partition_sizes(self) -> list[int]:
        return list(self.local_output_sizes)

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: int | None = None) -> None:
        if shard_id is None:
            return _refuse_fused_at_tp(self, param, loaded_weight)
        offset = sum(self.local_output_sizes[:shard_id])
        size = self.local_output_sizes[shard_id]
        _load_fused_part(param, loaded_weight, shard_id, offset, size, self.tp_rank)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections stored as one weight: [q heads | k heads | v heads] of this
    rank. Query heads are split; KV heads are split too, or replicated when there are more
    ranks than KV heads. ``q_size`` / ``kv_size`` are the local widths."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int, bias: bool = False,
                 quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        tp_size = get_tensor_model_parallel_world_size()
        tp_rank = get_tensor_model_parallel_rank()
        self.head_dim = head_dim
        self.num_heads = divide(num_heads, tp_size, "num_attention_heads")
        self.num_kv_heads, self.kv_shard = kv_head_shard(num_kv_heads, tp_size, tp_rank)
        self.q_size = self.num_heads * head_dim
        self.kv_size = self.num_kv_heads * head_dim
        # The local width times tp_size; with replicated KV heads it exceeds the global width.
        super().__init__(hidden_size, (self.q_size + 2 * self.kv_size) * tp_size, bias,
                         quant_config=quant_config, prefix=prefix)

    def _output_partition_sizes(self) -> list[int]:
        return [self.q_size, self.kv_size, self.kv_size]

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: str | None = None) -> None:
        if shard_id is None:
            return _refuse_fused_at_tp(self, param, loaded_weight)
        index, offset, size, shard = {
            "q": (0, 0, self.q_size, self.tp_rank),
            "k": (1, self.q_size, self.kv_size, self.kv_shard),
            "v": (2, self.q_size + self.kv_size, self.kv_size, self.kv_shard),
        }[shard_id]
        _load_fused_part(param, loaded_weight, index, offset, size, shard)
