"""Custom logits processors, vLLM V1's interface: ``LLM(model, logits_processors=[MyProcessor
or "module:MyProcessor"])`` or ``pagedlm serve M --logits-processors module:MyProcessor``.
Each request configures them through ``SamplingParams(extra_args={...})`` (HTTP:
``vllm_xargs``). See docs/features.md, "Custom logits processors"."""

from __future__ import annotations

import inspect
from abc import abstractmethod
from functools import partial
from typing import Any, Callable, Union

import torch

from pagedlm.sampling_params import SamplingParams
from pagedlm.v1.sample.logits_processor.builtin import process_dict_updates
from pagedlm.v1.sample.logits_processor.interface import (
    AddedRequest,
    BatchUpdate,
    LogitsProcessor,
    MovedRequest,
    MoveDirectionality,
    RemovedRequest,
)

# A per-request processor (vLLM's ``vllm.logits_process.LogitsProcessor``): called with the
# request's output token ids and its logits row [vocab], or with (prompt ids, output ids, row).
RequestLogitsProcessor = Union[Callable[[list[int], torch.Tensor], torch.Tensor],
                               Callable[[list[int], list[int], torch.Tensor], torch.Tensor]]


class AdapterLogitsProcessor(LogitsProcessor):
    """A batch-level processor made of per-request callables: subclass it, implement
    ``is_argmax_invariant`` and ``new_req_logits_processor(params)`` (None: the request is left
    alone), and call ``super().__init__(...)`` from an ``__init__`` of your own."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        # row -> the request's callable with its token lists bound (the live output list:
        # it always reads the tokens generated so far)
        self.req_info: dict[int, partial[torch.Tensor]] = {}

    @abstractmethod
    def new_req_logits_processor(self, params: SamplingParams) -> RequestLogitsProcessor | None:
        raise NotImplementedError

    def _new_state(self, params: SamplingParams, prompt_ids: list[int] | None,
                   output_ids: list[int]) -> partial[torch.Tensor] | None:
        req_lp = self.new_req_logits_processor(params)
        if req_lp is None:
            return None
        takes_prompt = len(inspect.signature(req_lp).parameters) == 3
        return partial(req_lp, prompt_ids, output_ids) if takes_prompt else partial(req_lp, output_ids)

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.req_info, batch_update, self._new_state)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, req_lp in self.req_info.items():
            row_logits = logits[row]  # [vocab], a view
            new_logits = req_lp(row_logits)
            if new_logits is not row_logits:
                logits[row] = new_logits
        return logits


__all__ = ["AdapterLogitsProcessor", "AddedRequest", "BatchUpdate", "LogitsProcessor", "MoveDirectionality",
           "MovedRequest", "RemovedRequest", "RequestLogitsProcessor", "process_dict_updates"]
