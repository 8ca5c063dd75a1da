"""Custom logits processors for tests/unit/test_custom_logits_processors.py and
tests/e2e/test_custom_logits_server.py, written as vLLM's examples write theirs (only the
package name differs); loaded by class and by "custom_logits_procs:Name"."""

from __future__ import annotations

import torch

from pagedlm import SamplingParams
from pagedlm.config import VllmConfig
from pagedlm.v1.sample.logits_processor import AdapterLogitsProcessor, BatchUpdate, LogitsProcessor
from pagedlm.v1.sample.logits_processor.builtin import process_dict_updates


class DummyLogitsProcessor(LogitsProcessor):
    """vLLM's example: rows whose extra_args name a target_token can only produce it."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.max_rows = vllm_config.scheduler_config.max_num_seqs
        self.req_info: dict[int, int] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        target = (sampling_params.extra_args or {}).get("target_token")
        if target is not None and not isinstance(target, int):
            raise ValueError(f"target_token must be an integer, got {target!r}")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.req_info, batch_update,
                             lambda params, _, __: params.extra_args and params.extra_args.get("target_token"))
        assert all(0 <= row < self.max_rows for row in self.req_info)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.req_info:
            return logits
        cols = torch.tensor(list(self.req_info.values()), dtype=torch.long, device=logits.device)
        rows = torch.tensor(list(self.req_info.keys()), dtype=torch.long, device=logits.device)
        values_to_keep = logits[rows, cols].clone()
        logits[rows] = float("-inf")
        logits[rows, cols] = values_to_keep
        return logits


class CountingPerRequest:
    """A per-request callable (prompt ids, output ids, row): forces start + the number of tokens
    generated so far, so it only works if the output list it holds is the live one."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __call__(self, prompt_ids: list[int], output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        assert prompt_ids, "the prompt ids reach the per-request processor"
        keep = self.start + len(output_ids)
        out = torch.full_like(logits, float("-inf"))
        out[keep] = 0.0
        return out


class CountingAdapter(AdapterLogitsProcessor):
    """vLLM's AdapterLogitsProcessor around CountingPerRequest (extra_args {"count_from": k})."""

    def is_argmax_invariant(self) -> bool:
        return False

    def new_req_logits_processor(self, params: SamplingParams):
        start = (params.extra_args or {}).get("count_from")
        return None if start is None else CountingPerRequest(start)


class OnlyTokenWhenRandom(LogitsProcessor):
    """Argmax-invariant by its own declaration: vLLM skips it for greedy rows and applies it
    after the temperature, so a greedy row asking for it is left alone."""

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.req_info: dict[int, int] = {}

    def is_argmax_invariant(self) -> bool:
        return True

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.req_info, batch_update,
                             lambda params, _, __: (params.extra_args or {}).get("only_token"))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, token in self.req_info.items():
            keep = logits[row, token].clone()
            logits[row] = float("-inf")
            logits[row, token] = keep
        return logits


class NotAProcessor:
    """Not a LogitsProcessor subclass: refused at start-up."""
