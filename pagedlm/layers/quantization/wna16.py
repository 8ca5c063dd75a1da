"""What AWQ and GPTQ share once loaded: weight-only int4/int8 codes with per-group scales and
zero points, repacked into one internal layout (``pagedlm/kernels/wna16_reference.py``
describes it) and applied by one GEMM (``triton_wna16`` on CUDA, the reference elsewhere).

Each format's method creates its checkpoint tensors with their own names, shapes and packing
(so tensor-parallel narrowing and fused q/k/v, gate/up placement work through the layer's
weight loader), and in ``process_weights_after_loading`` turns them into unsigned codes
[K, N], scales [G, N], zero points [G, N] and the input order; ``finish_repack`` below then
replaces the checkpoint parameters by the internal ones.
"""

from __future__ import annotations

import torch
from torch import nn

from pagedlm.kernels import ops, wna16_reference
from pagedlm.layers.quantization.base import QuantizationError, QuantMethod, fill_uniform, replace_param


def unpack_along_rows(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [R, C] with ``32 // bits`` codes per element along dim 0, sequential -> [R * pack, C]."""
    return wna16_reference.unpack_codes(packed, bits)


def unpack_along_cols(packed: torch.Tensor, bits: int, order: list[int] | None = None) -> torch.Tensor:
    """int32 [R, C] with ``32 // bits`` codes per element along dim 1 -> [R, C * pack].

    ``order[i]`` is the column (within its pack) that the i-th lowest field holds: AutoGPTQ
    packs sequentially (None), AutoAWQ's GEMM layout uses [0, 2, 4, 6, 1, 3, 5, 7]."""
    pack = 32 // bits
    shifts = torch.arange(0, 32, bits, device=packed.device, dtype=torch.int32)
    fields = (packed[:, :, None] >> shifts[None, None, :]) & ((1 << bits) - 1)  # [R, C, pack]
    if order is not None:
        inverse = [order.index(col) for col in range(pack)]  # field index holding each column
        fields = fields[:, :, inverse]
    return fields.reshape(packed.shape[0], -1)


def plan_groups(layer: nn.Module, group_size: int, act_order: bool, input_size_per_partition: int,
                input_size: int, params_dtype: torch.dtype) -> tuple[int, bool]:
    """(scale groups this rank holds, whether its groups are its own rows' ``group_size`` runs)
    for a layer of ``group_size`` (-1: one group over the input), and the layer's bookkeeping
    for the repack: its activation dtype, first input row and first group, and group size.
    Act-order shards of a row-parallel layer index any group: every rank then keeps all groups
    (as vLLM does)."""
    k = input_size_per_partition
    size = group_size if group_size != -1 else input_size
    sharded = group_size != -1 and not (act_order and k != input_size)
    if sharded:
        check_group_size(size, k, getattr(layer, "prefix", ""))
    layer.wna16_act_dtype = params_dtype
    layer.wna16_first_row = getattr(layer, "tp_rank", 0) * k if k != input_size else 0
    layer.wna16_first_group = layer.wna16_first_row // size if sharded else 0
    layer.wna16_group_size = size
    return (k // size if sharded else -(-input_size // size)), sharded


def order_rows(layer: nn.Module, codes: torch.Tensor, g_idx: torch.Tensor | None, num_groups: int,
               group_size: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, int]:
    """(codes [K, N] in kernel order, perm, per-row group ids, group size) from the checkpoint's
    per-input group ids ``g_idx`` (None: groups in input order); ``group_size`` -1 is one group."""
    if group_size == -1:  # one group: nothing to reorder, whatever g_idx says
        return codes, None, None, codes.shape[0]
    size = layer.wna16_group_size
    if g_idx is None:
        return codes, None, None, size
    local_ids = g_idx.long() - layer.wna16_first_group
    if local_ids.numel() and (local_ids.min() < 0 or local_ids.max() >= num_groups):
        raise QuantizationError(f"{getattr(layer, 'prefix', '')}: the checkpoint's group indices name groups outside "
                                f"its {num_groups} scale groups")
    perm, row_groups, _ = input_order(local_ids, size)
    return (codes[perm.long()] if perm is not None else codes), perm, row_groups, size


def check_group_size(group_size: int, input_size_per_partition: int, prefix: str) -> None:
    if input_size_per_partition % group_size:
        raise QuantizationError(f"{prefix or 'a linear layer'}: input size per rank {input_size_per_partition} is "
                                f"not a multiple of group_size {group_size}; use a smaller tensor_parallel_size")


def input_order(g_idx: torch.Tensor, group_size: int) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """(perm, per-row group ids, group ids in the new order) for a GPTQ ``g_idx`` [K].

    The kernel's fast path wants the groups contiguous and ``group_size`` rows each. Act-order
    checkpoints store the rows in the original order with a shuffled ``g_idx``: sorting the rows
    by group restores that, at the cost of gathering x's columns (``perm``). When even sorted rows
    are not whole groups (a row-parallel shard of an act-order layer), each row keeps its group
    id and the kernel reads it per row."""
    k = g_idx.numel()
    g_idx = g_idx.long()  # local group ids: the caller subtracted the shard's first group
    contiguous = torch.arange(k, device=g_idx.device) // group_size
    if torch.equal(g_idx, contiguous):
        return None, None, g_idx
    perm = torch.argsort(g_idx, stable=True)
    sorted_ids = g_idx[perm]
    if torch.equal(sorted_ids, contiguous):
        return perm.to(torch.int32), None, sorted_ids
    return perm.to(torch.int32), sorted_ids.to(torch.int32), sorted_ids


# A layer's operands for the CUTLASS kernel (``cutlass_w4a16.prepare``), where it keeps them:
# non-persistent buffers, so they follow the module (sleep mode's offload) and never reach a
# checkpoint.
_CUTLASS_BUFFERS = ("wna16_cutlass_codes", "wna16_cutlass_scales", "wna16_cutlass_zeros")


class WNA16LinearMethod(QuantMethod):
    """The apply half of AWQ and GPTQ; subclasses create and repack the checkpoint tensors."""

    def __init__(self, bits: int, group_size: int) -> None:
        self.bits = bits
        self.group_size = group_size  # -1: one group over the whole input

    def finish_repack(self, layer: nn.Module, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                      perm: torch.Tensor | None, row_group_ids: torch.Tensor | None, group_size: int,
                      drop: tuple[str, ...]) -> None:
        """Install the internal layout. codes [K, N] (rows already in kernel order), scales and
        zeros [G, N] in the activation dtype; ``drop`` names the checkpoint tensors to free."""
        for name in drop:
            if hasattr(layer, name):
                delattr(layer, name)
        # The kernels' interleaved packing (tiles of R rows, see wna16_reference); TP shards
        # were cut from the checkpoint tensors before this, so each rank packs its own rows.
        replace_param(layer, "qweight", wna16_reference.pack_internal(codes, self.bits, group_size))
        replace_param(layer, "scales", scales.contiguous())
        layer.register_parameter("zeros", nn.Parameter(zeros.contiguous(), requires_grad=False))
        # Non-persistent: derived at load, never part of a checkpoint or a state_dict.
        layer.register_buffer("wna16_perm", perm, persistent=False)
        layer.register_buffer("wna16_row_groups", row_group_ids, persistent=False)
        layer.wna16_group_size = group_size
        on_gpu = ops.current_backend() == "triton" and codes.is_cuda
        cutlass_ops = self._cutlass_operands(layer, codes, scales, zeros, row_group_ids, group_size) if on_gpu else None
        for name, tensor in zip(_CUTLASS_BUFFERS, cutlass_ops or (None,) * len(_CUTLASS_BUFFERS)):
            layer.register_buffer(name, tensor, persistent=False)
        if on_gpu:
            from pagedlm.kernels import wna16_tuning  # noqa: PLC0415 - CUDA only

            # Once per weight shape: the fastest kernel per batch-size bucket on this device.
            wna16_tuning.tune(layer.qweight, layer.scales, layer.zeros, row_group_ids, group_size, self.bits,
                              cutlass_ops)

    def _cutlass_operands(self, layer: nn.Module, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                          row_group_ids: torch.Tensor | None, group_size: int) -> tuple | None:
        """The CUTLASS kernel's copy of the codes (``cutlass_w4a16``: batched decode and prefill
        on Hopper), where the layer fits it, the library builds and its memory budget allows."""
        from pagedlm.kernels import cutlass_w4a16  # noqa: PLC0415

        k, n = codes.shape
        if (scales.dtype not in cutlass_w4a16.DTYPES
                or not cutlass_w4a16.layer_fits(k, n, group_size, self.bits, row_group_ids is not None)
                or not cutlass_w4a16.available(codes.device, scales.dtype)
                or not cutlass_w4a16.reserve(layer, codes.device, k * n // 2 + 2 * scales.numel() * 2)):
            return None
        return cutlass_w4a16.prepare_codes(codes, scales, zeros, group_size, self.bits)

    def dequantized_weight(self, layer: nn.Module) -> torch.Tensor:
        dense = wna16_reference.wna16_dequantize(layer.qweight, layer.scales.float(), layer.zeros.float(),
                                                 layer.wna16_row_groups, layer.wna16_group_size, self.bits)
        if layer.wna16_perm is not None:  # kernel row k is the layer's input perm[k]
            ordered = torch.empty_like(dense)
            ordered[layer.wna16_perm.long()] = dense
            dense = ordered
        return dense.t()

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if ops.current_backend() == "triton":
            from pagedlm.kernels import triton_wna16  # noqa: PLC0415 - needs CUDA + Triton

            cutlass_ops = getattr(layer, _CUTLASS_BUFFERS[0], None)
            if cutlass_ops is not None:
                cutlass_ops = tuple(getattr(layer, name) for name in _CUTLASS_BUFFERS)
            return triton_wna16.wna16_gemm(x, layer.qweight, layer.scales, layer.zeros, layer.wna16_perm,
                                           layer.wna16_row_groups, layer.wna16_group_size, self.bits, bias,
                                           cutlass_ops)
        return wna16_reference.wna16_gemm(x, layer.qweight, layer.scales, layer.zeros, layer.wna16_perm,
                                          layer.wna16_row_groups, layer.wna16_group_size, self.bits, bias)


def init_dummy_wna16(layer: nn.Module, bits: int, generator: torch.Generator) -> None:
    """Random words for packed int32 tensors (every field is a valid code), sane scales,
    uniform floats elsewhere (bias); the repack then runs as after a checkpoint."""
    for name, param in layer.named_parameters(recurse=False):
        if param.dtype == torch.int32:
            param.data.copy_(random_codes_int32(tuple(param.shape), generator))
        elif name == "scales":
            fill_dummy_scales(param, bits, generator)
        else:
            fill_uniform(param, -0.05, 0.05, generator)


def random_codes_int32(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Uniform random int32 words: every field of every word is a valid code."""
    return torch.randint(-(2**31), 2**31 - 1, shape, generator=generator, device=generator.device,
                         dtype=torch.int64).to(torch.int32)


def fill_dummy_scales(param: torch.Tensor, bits: int, generator: torch.Generator) -> None:
    """Scales that keep dequantized weights near +-0.05, as the float dummy init does."""
    span = 2 ** (bits - 1)
    values = (torch.rand(param.shape, generator=generator, device=generator.device) * 0.5 + 0.5) * (0.05 / span)
    param.data.copy_(values.to(param.dtype))
