"""The scheduler side of multi-LoRA (pure Python, no torch).

``LoRAStepGate``: a step never mixes more than ``max_loras`` distinct adapters, since only
that many are resident on the device. A waiting request whose adapter would be one too many
is skipped (it keeps its place in the queue) until a running adapter drains; requests of
adapters already running, and base-model requests, go ahead of it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from pagedlm.lora.request import wire_id


class LoRAStepGate:
    def __init__(self, max_loras: int | None) -> None:
        self.max_loras = max_loras  # None: LoRA is off, every request is admitted
        self._active: set[int] = set()

    def begin(self, running: Iterable[Any]) -> None:
        """The adapters of the running requests (they stay in the step)."""
        if self.max_loras is not None:
            self._active = {wire_id(r.lora_request) for r in running if r.lora_request}

    def admits(self, request: Any) -> bool:
        if self.max_loras is None or not request.lora_request:
            return True
        lora_id = wire_id(request.lora_request)
        return lora_id in self._active or len(self._active) < self.max_loras

    def admitted(self, request: Any) -> None:
        if self.max_loras is not None and request.lora_request:
            self._active.add(wire_id(request.lora_request))


def lora_stats(running: Iterable[Any], waiting: Iterable[Any]) -> tuple[dict[str, int], dict[str, int]]:
    """(running, waiting) request counts per adapter name: vLLM's lora_requests_info."""
    def count(requests: Iterable[Any]) -> dict[str, int]:
        return dict(Counter(r.lora_request["name"] for r in requests if r.lora_request))

    return count(running), count(waiting)
