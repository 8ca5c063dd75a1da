"""N-gram (prompt lookup) proposer: the tokens that followed the latest earlier occurrence of
the sequence's last n tokens, longest n first (prompt_lookup_max down to prompt_lookup_min).
Host-only numpy, no model, writes no KV."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pagedlm.spec_decode.config import SpeculativeConfig


def ngram_propose(token_ids: np.ndarray, min_n: int, max_n: int, k: int) -> list[int]:
    """token_ids [L] int64 -> up to k draft ids ([] when no n-gram of the suffix recurs)."""
    length = len(token_ids)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        # Windows starting at 0..L-n-1: every earlier occurrence, the suffix itself excluded.
        windows = sliding_window_view(token_ids[: length - 1], n)  # [L - n, n]
        hits = np.flatnonzero((windows == token_ids[length - n :]).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n  # the most recent occurrence predicts best
            return token_ids[start : start + k].tolist()
    return []


class NgramProposer:
    num_lookahead_tokens = 0

    def __init__(self, config: SpeculativeConfig) -> None:
        self.k = config.num_speculative_tokens
        self.min_n, self.max_n = config.prompt_lookup_min, config.prompt_lookup_max

    def kv_bytes_per_block(self) -> int:
        return 0

    def initialize_kv_cache(self, num_blocks: int) -> None:
        pass

    def after_target_forward(self, inputs: object, hidden: object) -> None:
        pass

    def propose(self, states: list) -> tuple[list[list[int]], None]:
        """Drafts per request from its tokens so far; n-gram drafts carry no distribution."""
        return [ngram_propose(np.asarray(s.token_ids, dtype=np.int64), self.min_n, self.max_n, self.k)
                for s in states], None
