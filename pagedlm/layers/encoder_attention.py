"""Bidirectional attention for encoder-only models (BERT).

Every token of a sequence attends to every other token of the same sequence, so a prompt
must be computed whole in one step; nothing is written to a KV cache (the request finishes
after that step). The runner's attention metadata gives the sequence boundaries.

``sliding_window`` (ModernBERT's local layers): a token attends only to the tokens within that
distance on either side, ``|i - j| <= sliding_window`` (transformers' bidirectional sliding
window: ``local_attention // 2``), through an exact band mask. Plain torch: it runs the same on
CPU and GPU (scaled_dot_product_attention picks the kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.forward_context import get_attn_metadata


class EncoderOnlyAttention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, scale: float, sliding_window: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q/k/v [T, Hq * D] -> [T, Hq * D]
        meta = get_attn_metadata()
        starts = meta.query_start_loc.tolist()
        seq_lens = meta.seq_lens.tolist()
        num_tokens = q.shape[0]
        out = torch.empty_like(q)
        for b, seq_len in enumerate(seq_lens):
            lo, hi = starts[b], starts[b + 1]
            if hi - lo != seq_len:
                raise RuntimeError("encoder-only attention needs each prompt whole in one step "
                                   f"(got {hi - lo} of {seq_len} tokens): chunked prefill / prefix caching are on")
            heads = [x[lo:hi].view(hi - lo, self.num_heads, self.head_dim).transpose(0, 1) for x in (q, k, v)]
            mask = None
            if self.sliding_window is not None and hi - lo > self.sliding_window + 1:
                idx = torch.arange(hi - lo, device=q.device)
                mask = (idx[:, None] - idx[None, :]).abs() <= self.sliding_window  # [L, L] band, True = attend
            o = F.scaled_dot_product_attention(*heads, attn_mask=mask, scale=self.scale)  # [H, L, D]
            out[lo:hi] = o.transpose(0, 1).reshape(hi - lo, -1)
        if num_tokens > starts[len(seq_lens)]:
            out[starts[len(seq_lens)]:] = 0  # padding rows (never read)
        return out
