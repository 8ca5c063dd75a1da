"""The runner's side: the scheduler's grammar bitmask applied to the step's logits."""

from __future__ import annotations

import numpy as np
import torch


def apply_grammar_bitmask(logits: torch.Tensor, bitmask: np.ndarray, rows: list[int]) -> torch.Tensor:
    """Disallowed tokens -> -inf in logits [S, V] (float32 returned). bitmask [K, ceil(V/32)] int32
    holds the rows of the constrained requests; ``rows[k]`` is bitmask row k's logits row.
    xgrammar's kernel takes one mask row per logits row, so unconstrained rows get all ones.
    Only the compact mask crosses to the device (pinned, non-blocking: no host sync); torch
    on CPU, xgrammar's kernel on CUDA."""
    import xgrammar as xgr

    logits = logits.to(torch.float32)
    device = logits.device
    mask = torch.from_numpy(bitmask)  # [K, W]
    if rows == list(range(logits.shape[0])):
        full = mask.to(device, non_blocking=True) if device.type == "cpu" else _to_device(mask, device)
    else:
        index = torch.tensor(rows, dtype=torch.long)
        if device.type != "cpu":
            mask, index = _to_device(mask, device), _to_device(index, device)
        full = torch.full((logits.shape[0], bitmask.shape[1]), -1, dtype=torch.int32, device=device)  # [S, W]
        full.index_copy_(0, index, mask)
    xgr.apply_token_bitmask_inplace(logits, full, vocab_size=logits.shape[1])
    return logits


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # The caching host allocator keeps the pinned block alive until the copy has run.
    return t.pin_memory().to(device, non_blocking=True)
