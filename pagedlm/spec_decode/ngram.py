"""N-gram (prompt lookup) proposer: the tokens that followed the latest earlier occurrence of
the sequence's last n tokens, longest n first (prompt_lookup_max down to prompt_lookup_min).
Host-only numpy, no model, writes no KV."""

from __future__ import annotations

import numpy as np

from pagedlm.spec_decode.config import SpeculativeConfig


def ngram_propose(token_ids: np.ndarray, min_n: int, max_n: int, k: int) -> list[int]:
    """token_ids [L] int64 -> up to k draft ids ([] when no n-gram of the suffix recurs).

    One vectorised compare finds the earlier occurrences of the last token; only those are
    extended backwards (usually a handful), so a step over a large batch stays cheap."""
    length = len(token_ids)
    if length < min_n + 1:
        return []
    ends = np.flatnonzero(token_ids[: length - 1] == token_ids[-1])  # candidate match ends
    if not len(ends):
        return []
    max_n = min(max_n, length - 1)
    # match length of the suffix ending at each candidate, up to max_n
    match = np.ones(len(ends), dtype=np.int64)
    alive = np.ones(len(ends), dtype=bool)
    for back in range(1, max_n):
        idx = ends - back
        ok = alive & (idx >= 0)
        ok[ok] = token_ids[idx[ok]] == token_ids[length - 1 - back]
        alive &= ok
        match += alive
        if not alive.any():
            break
    best = match.max()
    if best < min_n:
        return []
    start = int(ends[np.flatnonzero(match == best)[-1]]) + 1  # the most recent longest match
    return token_ids[start : start + k].tolist()


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
