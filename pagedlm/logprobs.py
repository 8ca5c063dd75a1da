"""Logprob containers (vLLM's ``vllm.logprobs``): ``Logprob`` and ``FlatLogprobs``.

A request's logprobs are normally a list with one ``{token_id: Logprob}`` dict per position
(``None`` for a prompt's first token). ``SamplingParams(flat_logprobs=True)`` returns them as
a ``FlatLogprobs`` instead, as vLLM does: the same entries in a few flat lists (one per field,
and each position's [start, end) range in them), so a long request makes a constant number of
Python objects rather than a dict and k ``Logprob`` objects per position, which is what the
garbage collector pays for. It reads like the list: ``len``, indexing (a dict per position,
built on access), slicing (another ``FlatLogprobs``) and iteration.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSequence
from dataclasses import dataclass, field
from typing import overload

from pagedlm.outputs import Logprob

LogprobsOnePosition = dict[int, Logprob]


@dataclass
class FlatLogprobs(MutableSequence[LogprobsOnePosition | None]):
    # Position i's entries are [start_indices[i], end_indices[i]) of the flat lists; a position
    # without logprobs (a prompt's first token) has an empty range and reads as an empty dict.
    start_indices: list[int] = field(default_factory=list)
    end_indices: list[int] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    ranks: list[int | None] = field(default_factory=list)
    decoded_tokens: list[str | None] = field(default_factory=list)

    def append(self, position: LogprobsOnePosition | None) -> None:
        self.start_indices.append(len(self.token_ids))
        for token_id, lp in (position or {}).items():
            self._add(token_id, lp.logprob, lp.rank, lp.decoded_token)
        self.end_indices.append(len(self.token_ids))

    def append_position(self, token_ids: Iterable[int], logprobs: Iterable[float], ranks: Iterable[int | None],
                        decoded_tokens: Iterable[str | None]) -> None:
        """One position's entries without building its dict (the engine's path); a token named
        twice keeps its first entry, as the dict would."""
        start = len(self.token_ids)
        self.start_indices.append(start)
        seen: set[int] = set()
        for token_id, lp, rank, text in zip(token_ids, logprobs, ranks, decoded_tokens):
            if token_id not in seen:
                seen.add(token_id)
                self._add(token_id, lp, rank, text)
        self.end_indices.append(len(self.token_ids))

    def _add(self, token_id: int, logprob: float, rank: int | None, text: str | None) -> None:
        self.token_ids.append(token_id)
        self.logprobs.append(logprob)
        self.ranks.append(rank)
        self.decoded_tokens.append(text)

    def __len__(self) -> int:
        return len(self.start_indices)

    @overload
    def __getitem__(self, index: int) -> LogprobsOnePosition: ...

    @overload
    def __getitem__(self, index: slice) -> FlatLogprobs: ...

    def __getitem__(self, index: int | slice) -> LogprobsOnePosition | FlatLogprobs:
        if isinstance(index, slice):
            out = FlatLogprobs()
            for i in range(*index.indices(len(self))):
                out.append_position(*self._columns(i))
            return out
        start, end = self.start_indices[index], self.end_indices[index]
        return {self.token_ids[j]: Logprob(self.logprobs[j], self.ranks[j], self.decoded_tokens[j])
                for j in range(start, end)}

    def _columns(self, i: int) -> tuple[list, list, list, list]:
        span = slice(self.start_indices[i], self.end_indices[i])
        return self.token_ids[span], self.logprobs[span], self.ranks[span], self.decoded_tokens[span]

    def __iter__(self) -> Iterator[LogprobsOnePosition]:
        return (self[i] for i in range(len(self)))

    def __setitem__(self, index, value) -> None:  # noqa: ANN001 - the list interface's
        raise TypeError("FlatLogprobs is append-only")

    def __delitem__(self, index) -> None:  # noqa: ANN001
        raise TypeError("FlatLogprobs is append-only")

    def insert(self, index: int, value: LogprobsOnePosition | None) -> None:
        if index != len(self):
            raise TypeError("FlatLogprobs is append-only")
        self.append(value)


__all__ = ["FlatLogprobs", "Logprob", "LogprobsOnePosition"]
