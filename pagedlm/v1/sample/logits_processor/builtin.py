"""vLLM's helper for processors that keep a dict of per-row state (``process_dict_updates``)."""

from __future__ import annotations

from typing import Callable, TypeVar

from pagedlm.sampling_params import SamplingParams
from pagedlm.v1.sample.logits_processor.interface import BatchUpdate, MoveDirectionality

T = TypeVar("T")


def process_dict_updates(req_entries: dict[int, T], batch_update: BatchUpdate | None,
                         new_state: Callable[[SamplingParams, list[int] | None, list[int]], T | None]) -> bool:
    """Apply a BatchUpdate to ``row -> state``; ``new_state`` gives an added request's state,
    or None when the processor does not apply to it. -> whether anything changed.

    Added rows are read first, then removed, then moved: the engine never lists a row as both
    removed and added in one update (a reused row is only added), so this order and the
    interface's (removed, added, moved) give the same result."""
    if not batch_update:
        return False
    updated = False
    for index, params, prompt_tok_ids, output_tok_ids in batch_update.added:
        state = new_state(params, prompt_tok_ids, output_tok_ids)
        if state is not None:
            req_entries[index] = state
            updated = True
        elif req_entries.pop(index, None) is not None:
            updated = True
    if not req_entries:
        return updated
    for index in batch_update.removed:
        if req_entries.pop(index, None) is not None:
            updated = True
    for a_index, b_index, direction in batch_update.moved:
        a_entry = req_entries.pop(a_index, None)
        b_entry = req_entries.pop(b_index, None)
        if a_entry is not None:
            req_entries[b_index] = a_entry
            updated = True
        if b_entry is not None:  # unidirectional: b's request was gone, a's took its row
            updated = True
            if direction == MoveDirectionality.SWAP:
                req_entries[a_index] = b_entry
    return updated
