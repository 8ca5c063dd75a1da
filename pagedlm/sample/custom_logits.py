"""Custom logits processors (vLLM V1's ``logits_processors``): the one seam between them and
the engine (loading them by name is pagedlm.engine.logits_processor_loading).

``CustomLogits``: the persistent batch reports each row change (removed, added, moved) as it
happens; ``begin_step`` hands the step's changes to every processor as one ``BatchUpdate``;
the sampler calls ``apply`` on its logits. Processors index rows of the persistent batch,
while the sampler's logits hold only the rows that sample this step, in the step's order, so
``apply`` scatters them into a [batch rows, vocab] tensor, runs the processors and gathers the
sampling rows back (rows that do not sample read zeros, and what a processor writes there is
dropped).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pagedlm.engine.logits_processor_loading import load_processor_class
from pagedlm.sampling_params import SamplingParams
from pagedlm.v1.sample.logits_processor.interface import (
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)


class CustomLogits:
    """The processors of one worker and the row changes they have not been told about yet."""

    def __init__(self, processors: list[LogitsProcessor]) -> None:
        self.non_argmax_invariant = [p for p in processors if not p.is_argmax_invariant()]
        self.argmax_invariant = [p for p in processors if p.is_argmax_invariant()]
        self.processors = processors
        self.batch_size = 0
        self._removed: list[int] = []
        self._added: list[tuple[int, SamplingParams, list[int] | None, list[int]]] = []
        self._moved: list[tuple[int, int, MoveDirectionality]] = []

    # ---- the persistent batch's reports (in the order they happen) ----------------------
    def removed(self, row: int) -> None:
        self._removed.append(row)

    def added(self, row: int, params: SamplingParams, prompt_token_ids: list[int], output_token_ids: list[int]) -> None:
        # A row freed and taken again in one step is only "added" (vLLM's convention; helpers
        # such as process_dict_updates read added before removed).
        if row in self._removed:
            self._removed.remove(row)
        self._added.append((row, params, prompt_token_ids, output_token_ids))

    def moved(self, src: int, dst: int) -> None:
        self._moved.append((src, dst, MoveDirectionality.UNIDIRECTIONAL))

    # ---- the runner's and the sampler's calls --------------------------------------------
    def begin_step(self, batch_size: int) -> None:
        """Before the step's forward: each processor's update_state, once (None: no change)."""
        self.batch_size = batch_size
        update = None
        if self._removed or self._added or self._moved:
            update = BatchUpdate(batch_size, self._removed, self._added, self._moved)
            self._removed, self._added, self._moved = [], [], []
        for processor in self.processors:
            processor.update_state(update)

    def apply(self, logits: torch.Tensor, batch_rows: np.ndarray | None, argmax_invariant: bool) -> torch.Tensor:
        """logits [S, V] of the sampling rows, ``batch_rows`` [S] their persistent-batch rows ->
        processed logits [S, V]. ``argmax_invariant``: the processors that run after the
        temperature on random rows; else those that run before greedy sampling."""
        processors = self.argmax_invariant if argmax_invariant else self.non_argmax_invariant
        if not processors:
            return logits
        if batch_rows is None:
            raise RuntimeError("custom logits processors need the persistent-batch row of each sampled row")
        rows = torch.from_numpy(np.asarray(batch_rows, dtype=np.int64)).to(logits.device)  # [S]
        full = logits.new_zeros(self.batch_size, logits.shape[1])  # [batch rows, V]
        full.index_copy_(0, rows, logits)
        for processor in processors:
            full = processor.apply(full)
        return full.index_select(0, rows)


def build_custom_logits(config: Any, device: torch.device) -> CustomLogits | None:
    """The worker's processors, built from the config's names; None when there are none."""
    names = getattr(config, "logits_processors", ())
    if not names:
        return None
    pin = torch.device(device).type == "cuda"
    return CustomLogits([load_processor_class(name)(config, torch.device(device), pin) for name in names])
