"""GLM-4.5 / 4.6: ``<think>...</think>`` written by the model after ``<|assistant|>``; with
``enable_thinking=False`` the template closes an empty block in the prompt (all content).

As vLLM's ``glm45``: a ``</think>`` without a ``<think>`` before it is content, and leading
whitespace before ``<think>`` is dropped. Where vLLM's streamed and non-streamed replies
differ, both here are the streamed one, so a stream's deltas equal the whole answer: a block
cut off before its ``</think>`` is reasoning (vLLM's non-streamed reply makes the output
content), and other text before ``<think>`` stays content (vLLM's message drops it).
"""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import Mode, ReasoningParser, partial_suffix


class Glm45ReasoningParser(ReasoningParser):
    implicit_start = False

    def split(self, text: str, final: bool = True) -> tuple[str | None, str | None]:
        if self.mode != Mode.UNDECIDED:
            return super().split(text, final)
        start = text.find(self.start_token)
        if start < 0:
            hold = 0 if final else partial_suffix(text, self.start_token)
            shown = text[:len(text) - hold]
            if not final and not shown.strip():
                return None, None  # only whitespace yet: may come before a <think>
            return None, shown or None
        before = text[:start] if text[:start].strip() else ""  # streamed as content by now
        reasoning, content = super().split(text[start:], final)
        return reasoning, (before + (content or "")) or None
