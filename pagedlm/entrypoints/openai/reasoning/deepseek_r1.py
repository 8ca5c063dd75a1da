"""DeepSeek-R1: the chat template ends with ``<think>\n``, so the output starts inside the
reasoning block and ``</think>`` ends it (an explicit leading ``<think>`` is dropped too)."""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import ReasoningParser


class DeepSeekR1ReasoningParser(ReasoningParser):
    implicit_start = True
