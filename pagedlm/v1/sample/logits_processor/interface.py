"""The batch-level logits processor interface of vLLM V1, same names and signatures.

A processor keeps per-row state for the requests of the persistent batch. Before each step
the engine hands it one ``BatchUpdate`` (or None when the batch did not change), to be read
in the order removed, added, moved; then ``apply`` gets the logits, one row per row of the
persistent batch (``batch_size`` rows), and returns them (it may change them in place).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pagedlm.sampling_params import SamplingParams


class MoveDirectionality(Enum):
    UNIDIRECTIONAL = auto()  # the request at index 1 moves to index 2 (index 1 is left empty)
    SWAP = auto()  # the requests at index 1 and index 2 trade places


RemovedRequest = int  # the row a finished or preempted request left
# (row, params, prompt token ids, output token ids). The output list is the engine's own,
# live list: it grows as the request generates, so a processor reads it at apply time.
AddedRequest = tuple[int, "SamplingParams", "list[int] | None", "list[int]"]
MovedRequest = tuple[int, int, MoveDirectionality]  # (index 1, index 2, directionality)


@dataclass(frozen=True)
class BatchUpdate:
    """How the persistent batch changed since the last step. Read removed, then added, then
    moved; an added or moved request may take a row another request held."""

    batch_size: int  # rows of the batch (and of the logits apply() gets)
    removed: Sequence[RemovedRequest]
    added: Sequence[AddedRequest]
    moved: Sequence[MovedRequest]


class LogitsProcessor(ABC):
    @classmethod
    def validate_params(cls, sampling_params: "SamplingParams") -> None:
        """Refuse a request's parameters (raise ValueError) before it is queued; called in
        the frontend for every generation request."""
        return None

    @abstractmethod
    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        """``vllm_config``: pagedlm's EngineConfig (``vllm_config.scheduler_config.max_num_seqs``
        is the most rows the batch has, as in vLLM's VllmConfig)."""
        raise NotImplementedError

    @abstractmethod
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [batch_size, vocab] float32 -> the processed logits (may be changed in place)."""
        raise NotImplementedError

    @abstractmethod
    def is_argmax_invariant(self) -> bool:
        """True if the processor never changes a row's argmax: it is then skipped for greedy
        rows and applied after the temperature, as vLLM does."""
        raise NotImplementedError

    @abstractmethod
    def update_state(self, batch_update: BatchUpdate | None) -> None:
        """Called once before each step; ``batch_update`` is None when the batch did not change."""
        raise NotImplementedError
