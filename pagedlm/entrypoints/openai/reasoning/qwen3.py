"""Qwen3: the model opens ``<think>`` itself unless the template did (thinking-only models) or
closed it already (``enable_thinking=False`` renders an empty ``<think>\n\n</think>``)."""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import ReasoningParser


class Qwen3ReasoningParser(ReasoningParser):
    implicit_start = False
