"""LoRA shrink / expand over a whole batch, every token with its own adapter slot.

    shrink:  out[t, :]  = x[t] @ A[slot[t]]^T          x [T, K], A [L, N, K] -> out [T, N] float32
    expand:  y[t, cols of slice i] += out[t, i*R:(i+1)*R] @ B[slot[t], cols of slice i]^T
                                                        B [L, M, R] (the scaling folded in), in place

Tokens with slot -1 (the base model) are left alone. The PyTorch functions here are the
reference (the CPU path and the test oracle); ``use_triton()`` swaps in the SGMV-style
Triton kernels of ``triton_lora`` (one launch for the batch, same signatures), chosen once
when the LoRA manager starts, from the device.
"""

from __future__ import annotations

import torch


def lora_shrink_ref(x: torch.Tensor, lora_a: torch.Tensor, token_slots: torch.Tensor) -> torch.Tensor:
    """[T, N] float32; rows of base-model tokens are zero."""
    out = torch.zeros(x.shape[0], lora_a.shape[1], dtype=torch.float32, device=x.device)
    for slot in torch.unique(token_slots).tolist():  # a host sync: fine for the reference
        if slot < 0:
            continue
        rows = token_slots == slot
        out[rows] = x[rows].float() @ lora_a[slot].float().t()
    return out


def lora_expand_ref(y: torch.Tensor, shrunk: torch.Tensor, lora_b: torch.Tensor, token_slots: torch.Tensor,
                    slice_starts: tuple[int, ...], rank: int) -> None:
    """y[:, slice i] += shrunk[:, i*rank:(i+1)*rank] @ B[slot, slice i]^T, per token, in place.
    ``slice_starts``: the column where each slice of y starts, and y's width last."""
    for slot in torch.unique(token_slots).tolist():
        if slot < 0:
            continue
        rows = token_slots == slot
        for i in range(len(slice_starts) - 1):
            lo, hi = slice_starts[i], slice_starts[i + 1]
            delta = shrunk[rows, i * rank:(i + 1) * rank] @ lora_b[slot, lo:hi].float().t()
            y[rows, lo:hi] += delta.to(y.dtype)


lora_shrink = lora_shrink_ref
lora_expand = lora_expand_ref


def use_triton() -> None:
    """Route shrink / expand to the Triton kernels (CUDA)."""
    global lora_shrink, lora_expand
    from pagedlm.lora import triton_lora  # noqa: PLC0415 - needs CUDA + Triton

    lora_shrink, lora_expand = triton_lora.lora_shrink, triton_lora.lora_expand


def use_reference() -> None:
    global lora_shrink, lora_expand
    lora_shrink, lora_expand = lora_shrink_ref, lora_expand_ref
