"""The runner's side: the scheduler's grammar bitmask applied to the step's logits."""

from __future__ import annotations

import numpy as np
import torch


def apply_grammar_bitmask(logits: torch.Tensor, bitmask: np.ndarray, rows: list[int]) -> torch.Tensor:
    """Disallowed tokens -> -inf in logits [S, V] (float32 returned). bitmask [K, ceil(V/32)] int32
    holds the rows of the constrained requests; ``rows[k]`` is bitmask row k's logits row.
    The other rows get an all-ones mask (xgrammar's kernel takes one mask row per logits row):
    torch on CPU, xgrammar's kernel on CUDA."""
    import xgrammar as xgr

    logits = logits.to(torch.float32)
    full = torch.full((logits.shape[0], bitmask.shape[1]), -1, dtype=torch.int32)  # [S, W]
    full[rows] = torch.from_numpy(bitmask)
    if logits.device.type != "cpu":
        full = full.pin_memory().to(logits.device, non_blocking=True)
    xgr.apply_token_bitmask_inplace(logits, full, vocab_size=logits.shape[1])
    return logits
