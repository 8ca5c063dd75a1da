"""ReasoningParser: (reasoning, content) of a model's output text, whole or streamed.

``split(text, final)`` is called with the whole text generated so far; both parts it returns
only ever grow as the text grows (a partial marker at the end is held back), so a stream
sends their differences and the concatenated deltas equal the non-streaming answer.
"""

from __future__ import annotations

import enum


class Mode(enum.IntEnum):
    THINKING = 0  # the output starts inside a reasoning block
    ENDED = 1  # the prompt already closed the block (e.g. enable_thinking=False): all content
    UNDECIDED = 2  # a reasoning block starts only if the output opens one


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class ReasoningParser:
    start_token = "<think>"
    end_token = "</think>"
    # The chat template opens the block itself, so output without markers is reasoning.
    implicit_start = False
    # The markers are single tokens, so the engine core can start constraints after the
    # reasoning (false: structured outputs are refused with this parser).
    token_markers = True
    # The markers are special tokens that skip_special_tokens would drop from the text the
    # parser sees (Mistral's [THINK]): the server then keeps special tokens in the output.
    keep_special_tokens = False

    def __init__(self, prompt_text: str | None = None) -> None:
        self.mode = self.initial_mode(prompt_text or "")

    def initial_mode(self, prompt_text: str) -> Mode:
        """The last marker in the prompt decides, as in the engine core's constraint gating."""
        start, end = prompt_text.rfind(self.start_token), prompt_text.rfind(self.end_token)
        if end > start:
            return Mode.ENDED
        if start >= 0:
            return Mode.THINKING
        return Mode.THINKING if self.implicit_start else Mode.UNDECIDED

    def split(self, text: str, final: bool = True) -> tuple[str | None, str | None]:
        """-> (reasoning, content); None where a part is empty."""
        if self.mode == Mode.ENDED:
            return None, text or None
        body = text
        if body.startswith(self.start_token):
            body = body[len(self.start_token):]
        elif not final and self.start_token.startswith(body):
            return None, None  # may still become the opening marker
        elif self.mode == Mode.UNDECIDED:
            return None, text or None
        end = body.find(self.end_token)
        if end < 0:
            if not final:
                body = body[: len(body) - partial_suffix(body, self.end_token)]
            return body or None, None
        return body[:end] or None, body[end + len(self.end_token):] or None
