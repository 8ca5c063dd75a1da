"""Step3: the chat template opens ``<think>``, so everything before ``</think>`` is reasoning
and what follows it is content (vLLM's ``step3``); a prompt whose last marker is ``</think>``
makes the output all content."""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import ReasoningParser


class Step3ReasoningParser(ReasoningParser):
    implicit_start = True
