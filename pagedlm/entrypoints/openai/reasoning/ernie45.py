"""ERNIE-4.5 Thinking: ``abc\n</think>\n\n<response>\ndef\n</response>\n`` or ``abc\n</think>\ndef``.

As vLLM's ``ernie45``: the output starts inside the reasoning block (text without ``</think>``
is all reasoning); after ``</think>`` the newlines are dropped, and a ``<response>`` that opens
the answer is unwrapped: the content is what lies between it and ``</response>`` (the rest is
dropped). Where vLLM's streamed and non-streamed replies differ (its message keeps the
newline after ``</think>`` when there is no ``<response>``), both here are the streamed one.
"""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import Mode, ReasoningParser, partial_suffix

RESPONSE_START, RESPONSE_END = "<response>", "</response>"


class Ernie45ReasoningParser(ReasoningParser):
    implicit_start = True

    def split(self, text: str, final: bool = True) -> tuple[str | None, str | None]:
        reasoning, content = super().split(text, final)
        if self.mode == Mode.ENDED or content is None:
            return reasoning, content
        body = content.lstrip("\n")
        if not final and RESPONSE_START.startswith(body):
            return reasoning, None  # may still become <response>
        if body.startswith(RESPONSE_START):
            body = body[len(RESPONSE_START):]
            end = body.find(RESPONSE_END)
            if end >= 0:
                body = body[:end]
            elif not final:
                body = body[:len(body) - partial_suffix(body, RESPONSE_END)]
        return reasoning, body or None
