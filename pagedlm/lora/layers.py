"""LoRALinear: a base linear layer plus the per-token LoRA delta of every adapter slot.

The base layer is untouched (its own forward, its own weights and quantization); the
wrapper adds ``x @ A[slot]^T @ B[slot]^T`` for each token through the step's token -> slot
mapping. Fused layers (QKV, gate/up) have one A/B pair per slice: A is stacked along its
rank dimension ([slots, num_slices * max_rank, in]) so one shrink serves every slice, and B
along the output columns ([slots, out, max_rank]) in the same order as the base weight.
Tensor parallelism shards A and B like the base layer: a column-parallel layer keeps the
full A and this rank's rows of B; a row-parallel layer keeps this rank's columns of A, and
the shrunk [T, slices * rank] activations are summed over ranks (tiny) before the expand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import torch
from torch import nn

from pagedlm.lora import ops as lora_ops
from pagedlm.worker.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_reduce,
)


@dataclass(frozen=True)
class LoRASlice:
    name: str  # the Hugging Face projection it stands for, e.g. "k_proj"
    out_offset: int  # first column of the base layer's (local) output it covers
    out_size: int  # its local width
    shard: int  # which tensor-parallel shard of the full B rows this rank holds (column layers)


class StepLoRAState:
    """What every wrapper reads in a step: the token -> slot mapping (a persistent device
    buffer, so CUDA graphs replay with each step's mapping) and whether any token uses one."""

    def __init__(self, max_num_tokens: int, device: torch.device) -> None:
        self.token_slots = torch.full((max_num_tokens,), -1, dtype=torch.int32, device=device)  # [max_tokens]
        # On CUDA the kernels always run (a graph cannot branch on the batch); on CPU a step
        # without adapters skips them.
        self.always = device.type == "cuda"
        self.active = self.always
        # Two pinned host buffers, used in turn: the copy of step N may still be queued behind
        # step N-1 when step N+1 is prepared (async scheduling), never behind N-2's collection.
        self._host = [torch.empty(max_num_tokens, dtype=torch.int32, pin_memory=True) for _ in range(2)] \
            if self.always else []
        self._turn = 0

    def upload(self, token_slots: np.ndarray) -> None:
        """This step's token -> slot mapping into the device buffer, without a host sync."""
        n = len(token_slots)
        if not self._host:
            self.token_slots[:n].copy_(torch.from_numpy(token_slots))
            return
        host = self._host[self._turn]
        self._turn ^= 1
        host.numpy()[:n] = token_slots
        self.token_slots[:n].copy_(host[:n], non_blocking=True)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, slices: list[LoRASlice], row_parallel: bool, state: StepLoRAState,
                 max_loras: int, max_rank: int, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.base = base
        self.slices = slices
        self.row_parallel = row_parallel
        self.state = state
        self.max_rank = max_rank
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.in_size = getattr(base, "input_size_per_partition", base.input_size)
        out_size = base.output_size if row_parallel else getattr(base, "output_size_per_partition", base.output_size)
        self.slice_starts = tuple(s.out_offset for s in slices) + (out_size,)
        # The all-reduce of a row-parallel base layer sums partial outputs; without it the
        # partial LoRA deltas are summed later along with them.
        self.reduce_shrunk = row_parallel and self.tp_size > 1 and getattr(base, "reduce_results", True)
        self.register_buffer("lora_a", torch.zeros(max_loras, len(slices) * max_rank, self.in_size, dtype=dtype,
                                                   device=device), persistent=False)  # [L, S*R, in]
        self.register_buffer("lora_b", torch.zeros(max_loras, out_size, max_rank, dtype=dtype, device=device),
                             persistent=False)  # [L, out, R]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not self.state.active:
            return y
        slots = self.state.token_slots[: x.shape[0]]
        shrunk = lora_ops.lora_shrink(x, self.lora_a, slots)  # [T, S*R] float32
        if self.reduce_shrunk:
            shrunk = tensor_model_parallel_all_reduce(shrunk)
        lora_ops.lora_expand(y, shrunk, self.lora_b, slots, self.slice_starts, self.max_rank)
        return y

    def set_slot(self, slot: int, weights: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Put one adapter in ``slot``: slice index -> (A [r, in], B [out, r]) of the full,
        unsharded projection (slices it does not target stay zero)."""
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        r_max = self.max_rank
        for i, (a, b) in weights.items():
            sl = self.slices[i]
            rank = a.shape[0]
            if self.row_parallel:
                a = a[:, self.tp_rank * self.in_size:(self.tp_rank + 1) * self.in_size]
            else:
                b = b[sl.shard * sl.out_size:(sl.shard + 1) * sl.out_size]
            self.lora_a[slot, i * r_max:i * r_max + rank].copy_(a)
            self.lora_b[slot, sl.out_offset:sl.out_offset + sl.out_size, :rank].copy_(b)
