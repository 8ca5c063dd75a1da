"""Persistent batch state: every running request owns one row of fixed-size host arrays and
device tensors, updated by each step's diff (rows added and removed, blocks appended, tokens
sampled) instead of being rebuilt from per-request lists every step.

Rows [0, num_rows) are dense after ``condense()``: a removed row leaves a hole that the last
row moves into, so per-step work is proportional to the diff, not to batch x history.

Penalty counts live on the device ([rows, vocab] int32) and are bumped by the step's sampled
ids on the device, so penalised requests neither re-pad their output lists every step nor
force a device-to-host sync under async scheduling. They are allocated on the first
penalised request and only kept exact for penalised rows (other rows pay nothing).

Token ids are kept per row with no assumption of one new token per row per step
(``append_tokens`` takes any number), so speculative decoding's k drafts per row fit.

An optional ``observer`` (custom logits processors' seam, pagedlm.sample.custom_logits) is told
of every row change as it happens: ``removed(row)``, ``added(row, params, prompt ids, output
ids)`` with the lists the caller passed (the runner passes its live lists), ``moved(src, dst)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pagedlm.sampling_params import SAMPLING_EPS, SamplingParams
from pagedlm.worker.graph_sampling import is_plain



def has_penalties(sp: SamplingParams) -> bool:
    return (abs(sp.presence_penalty) >= SAMPLING_EPS or abs(sp.frequency_penalty) >= SAMPLING_EPS
            or abs(sp.repetition_penalty - 1.0) >= SAMPLING_EPS)


class PersistentBatch:
    """Rows of the running requests; see the module docstring for the invariants."""

    def __init__(self, max_num_reqs: int, max_model_len: int, max_blocks_per_seq: int, vocab_size: int,
                 device: torch.device, observer: Any = None) -> None:
        self.observer = observer
        self.max_num_reqs, self.max_model_len, self.vocab_size = max_num_reqs, max_model_len, vocab_size
        self.device = torch.device(device)
        self.req_ids: list[str | None] = [None] * max_num_reqs
        self.row_of: dict[str, int] = {}
        self.num_rows = 0  # rows [0, num_rows) are in use or holes left by remove()
        # Host side: numpy views (the block table's over a pinned tensor on CUDA, so the
        # appended-blocks diff can be copied without staging).
        self.token_ids = np.zeros((max_num_reqs, max_model_len), dtype=np.int32)  # prompt + output
        self.num_tokens = np.zeros(max_num_reqs, dtype=np.int32)
        self.num_prompt_tokens = np.zeros(max_num_reqs, dtype=np.int32)
        self.num_computed_tokens = np.zeros(max_num_reqs, dtype=np.int32)
        self.num_blocks = np.zeros(max_num_reqs, dtype=np.int32)
        pin = self.device.type == "cuda"
        self._block_table_host = torch.zeros(max_num_reqs, max_blocks_per_seq, dtype=torch.int32, pin_memory=pin)
        self.block_table = self._block_table_host.numpy()  # [R, max_blocks]
        self.block_table_dev = (self._block_table_host.to(self.device) if pin else self._block_table_host)
        self.temperature = np.zeros(max_num_reqs, dtype=np.float32)
        self.presence = np.zeros(max_num_reqs, dtype=np.float32)
        self.frequency = np.zeros(max_num_reqs, dtype=np.float32)
        self.repetition = np.ones(max_num_reqs, dtype=np.float32)
        self.penalised = np.zeros(max_num_reqs, dtype=bool)
        self.plain = np.zeros(max_num_reqs, dtype=bool)  # greedy/temperature only (graph sampling)
        self.output_counts: torch.Tensor | None = None  # [R, V] int32 on the device, lazily
        self.prompt_mask: torch.Tensor | None = None  # [R, V] bool on the device, lazily

    # ---- the diff ---------------------------------------------------------------------
    def add(self, req_id: str, prompt_token_ids: list[int], output_token_ids: list[int], block_ids: list[int],
            num_computed_tokens: int, params: SamplingParams | None) -> int:
        """A new (or resumed) request takes the first free row; returns it."""
        if req_id in self.row_of:
            raise ValueError(f"request {req_id!r} already has row {self.row_of[req_id]}")
        row = self._free_row()
        num_tokens = len(prompt_token_ids) + len(output_token_ids)
        if num_tokens > self.max_model_len:
            raise ValueError(f"request {req_id!r} has {num_tokens} tokens; rows hold {self.max_model_len}")
        self.req_ids[row], self.row_of[req_id] = req_id, row
        self.num_rows = max(self.num_rows, row + 1)
        self.token_ids[row, : len(prompt_token_ids)] = prompt_token_ids
        self.token_ids[row, len(prompt_token_ids) : num_tokens] = output_token_ids
        self.num_tokens[row], self.num_prompt_tokens[row] = num_tokens, len(prompt_token_ids)
        self.num_computed_tokens[row] = num_computed_tokens
        self.num_blocks[row] = 0
        self.append_blocks(row, block_ids)
        self._set_params(row, params)
        if self.penalised[row]:
            self._init_penalty_row(row, prompt_token_ids, output_token_ids, params)
        if self.observer is not None and params is not None:
            self.observer.added(row, params, prompt_token_ids, output_token_ids)
        return row

    def remove(self, req_id: str) -> int | None:
        """Free a finished or preempted request's row (a hole until condense()); None if unknown."""
        row = self.row_of.pop(req_id, None)
        if row is not None:
            self.req_ids[row] = None
            self.penalised[row] = False
            self._clear_blocks(row)  # rows past their block count stay zero, as in a rebuild
            if self.observer is not None:
                self.observer.removed(row)
        return row

    def append_blocks(self, row: int, block_ids: list[int]) -> None:
        if not block_ids:
            return
        lo = int(self.num_blocks[row])
        hi = lo + len(block_ids)
        self.block_table[row, lo:hi] = block_ids
        self.num_blocks[row] = hi
        if self.block_table_dev is not self._block_table_host:  # only the new entries travel
            self.block_table_dev[row, lo:hi].copy_(self._block_table_host[row, lo:hi], non_blocking=True)

    def truncate_blocks(self, row: int, num_blocks: int) -> None:
        """Keep the row's first ``num_blocks`` blocks (speculative decoding's rollback freed the
        tail); the dropped entries read zero again, as in a rebuild."""
        nb = int(self.num_blocks[row])
        if num_blocks >= nb:
            return
        self.block_table[row, num_blocks:nb] = 0
        if self.block_table_dev is not self._block_table_host:
            self.block_table_dev[row, num_blocks:nb].zero_()
        self.num_blocks[row] = num_blocks

    def append_tokens(self, row: int, token_ids: list[int]) -> None:
        """Tokens that reached the host (one per step, or several with speculative decoding)."""
        lo = int(self.num_tokens[row])
        self.token_ids[row, lo : lo + len(token_ids)] = token_ids
        self.num_tokens[row] = lo + len(token_ids)

    def append_sampled(self, rows: np.ndarray, token_ids: np.ndarray) -> None:
        """One token for each of ``rows`` (distinct), in one vectorised write."""
        self.token_ids[rows, self.num_tokens[rows]] = token_ids
        self.num_tokens[rows] += 1

    def record_sampled(self, rows: torch.Tensor, sampled: torch.Tensor) -> None:
        """On the device: bump the penalty counts of ``rows`` [S] by ``sampled`` [S] (or [S, k]
        with -1 for rejected drafts). No sync; stream order keeps it before the next sample."""
        if self.output_counts is None:
            return
        if sampled.dim() == 1:
            sampled = sampled.unsqueeze(1)
        rows = rows.unsqueeze(1).expand_as(sampled)
        valid = sampled >= 0
        ones = valid.to(torch.int32)
        # Rejected (-1) entries add 0 at column 0: harmless and branch-free.
        self.output_counts.index_put_((rows, sampled.clamp(min=0)), ones, accumulate=True)

    def condense(self) -> list[tuple[int, int]]:
        """Fill holes with the last rows so rows [0, num_rows) are all in use; returns the
        (from, to) moves made."""
        moves: list[tuple[int, int]] = []
        hole, last = 0, self.num_rows - 1
        while True:
            while last >= 0 and self.req_ids[last] is None:
                last -= 1
            while hole < last and self.req_ids[hole] is not None:
                hole += 1
            if hole >= last:
                break
            self._move(last, hole)
            moves.append((last, hole))
            last -= 1
        self.num_rows = last + 1
        return moves

    # ---- reads ------------------------------------------------------------------------
    def rows_of(self, req_ids: list[str]) -> np.ndarray:
        return np.fromiter((self.row_of[r] for r in req_ids), dtype=np.int64, count=len(req_ids))

    def block_tables(self, rows: np.ndarray) -> np.ndarray:
        """[len(rows), widest row's block count] int32, zero-padded: one vectorised gather."""
        width = max(int(self.num_blocks[rows].max()), 1) if len(rows) else 1
        return self.block_table[rows, :width]

    def penalty_tensors(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(output counts [S, V] int32, prompt mask [S, V] bool or None) of device ``rows``."""
        if self.output_counts is None:
            return None
        mask = self.prompt_mask.index_select(0, rows) if self.prompt_mask is not None else None
        return self.output_counts.index_select(0, rows), mask

    # ---- internals --------------------------------------------------------------------
    def _free_row(self) -> int:
        if len(self.row_of) == self.num_rows:  # no holes (always so after condense())
            if self.num_rows >= self.max_num_reqs:
                raise RuntimeError(f"persistent batch full ({self.max_num_reqs} rows)")
            return self.num_rows
        for row in range(self.num_rows):
            if self.req_ids[row] is None:
                return row
        if self.num_rows >= self.max_num_reqs:
            raise RuntimeError(f"persistent batch full ({self.max_num_reqs} rows)")
        return self.num_rows

    def _clear_blocks(self, row: int) -> None:
        nb = int(self.num_blocks[row])
        self.block_table[row, :nb] = 0
        if self.block_table_dev is not self._block_table_host:
            self.block_table_dev[row, :nb].zero_()
        self.num_blocks[row] = 0

    def _set_params(self, row: int, sp: SamplingParams | None) -> None:
        if sp is None:  # pooling requests sample nothing
            self.temperature[row], self.presence[row], self.frequency[row], self.repetition[row] = 0, 0, 0, 1
            self.penalised[row] = self.plain[row] = False
            return
        self.temperature[row] = sp.temperature
        self.presence[row], self.frequency[row] = sp.presence_penalty, sp.frequency_penalty
        self.repetition[row] = sp.repetition_penalty
        self.penalised[row] = has_penalties(sp)
        self.plain[row] = is_plain(sp, self.vocab_size)

    def _init_penalty_row(self, row: int, prompt_token_ids: list[int], output_token_ids: list[int],
                          sp: SamplingParams) -> None:
        if self.output_counts is None:
            self.output_counts = torch.zeros(self.max_num_reqs, self.vocab_size, dtype=torch.int32,
                                             device=self.device)
        self.output_counts[row].zero_()
        out = _valid_ids(output_token_ids, self.vocab_size, self.device)
        self.output_counts[row].index_put_((out,), torch.ones_like(out, dtype=torch.int32), accumulate=True)
        if abs(sp.repetition_penalty - 1.0) < SAMPLING_EPS:
            return
        if self.prompt_mask is None:
            self.prompt_mask = torch.zeros(self.max_num_reqs, self.vocab_size, dtype=torch.bool, device=self.device)
        self.prompt_mask[row].zero_()
        self.prompt_mask[row, _valid_ids(prompt_token_ids, self.vocab_size, self.device)] = True

    def _move(self, src: int, dst: int) -> None:
        req_id = self.req_ids[src]
        self.req_ids[dst], self.req_ids[src] = req_id, None
        self.row_of[req_id] = dst
        n = int(self.num_tokens[src])
        self.token_ids[dst, :n] = self.token_ids[src, :n]
        nb = int(self.num_blocks[src])
        self.block_table[dst, :nb] = self.block_table[src, :nb]
        for arr in (self.num_tokens, self.num_prompt_tokens, self.num_computed_tokens, self.num_blocks,
                    self.temperature, self.presence, self.frequency, self.repetition, self.penalised, self.plain):
            arr[dst] = arr[src]
        self.penalised[src] = False
        if self.block_table_dev is not self._block_table_host:
            self.block_table_dev[dst, :nb].copy_(self.block_table_dev[src, :nb])
        self._clear_blocks(src)
        for t in (self.output_counts, self.prompt_mask):
            if t is not None and self.penalised[dst]:
                t[dst].copy_(t[src])
        if self.observer is not None:
            self.observer.moved(src, dst)


def _valid_ids(token_ids: list[int], vocab_size: int, device: torch.device) -> torch.Tensor:
    ids = torch.tensor([t for t in token_ids if 0 <= t < vocab_size], dtype=torch.int64)
    return ids.to(device)
