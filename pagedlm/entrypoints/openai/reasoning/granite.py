"""IBM Granite 3.x (``thinking=True``): ``Here is my thought process:...Here is my response:...``,
the markers written as text (``Here's`` also taken for ``Here is``, as vLLM's ``granite``).

Where vLLM's streamed and non-streamed replies differ, both here are the streamed one: the
output must start with a thought-process marker, or it is all content (vLLM's message also
finds the markers later in the text); a thought process cut off before its response marker is
reasoning (vLLM's message makes it content). The markers are dropped; the text between them,
newlines included, is the reasoning, and what follows the response marker is the content.
The prompt does not matter.

The markers are not single tokens, so the engine core cannot tell where the reasoning ends:
structured outputs are refused with this parser.
"""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import Mode, ReasoningParser, partial_suffix

THINK_STARTS = ("Here is my thought process:", "Here's my thought process:")
RESPONSE_STARTS = ("Here is my response:", "Here's my response:")


class GraniteReasoningParser(ReasoningParser):
    start_token = THINK_STARTS[0]
    end_token = RESPONSE_STARTS[0]
    token_markers = False

    def initial_mode(self, prompt_text: str) -> Mode:
        return Mode.UNDECIDED

    def split(self, text: str, final: bool = True) -> tuple[str | None, str | None]:
        start = next((m for m in THINK_STARTS if text.startswith(m)), None)
        if start is None:
            if not final and any(m.startswith(text) for m in THINK_STARTS):
                return None, None  # may still become the marker
            return None, text or None
        body = text[len(start):]
        found = [(body.find(m), m) for m in RESPONSE_STARTS if m in body]
        if not found:
            if not final:
                body = body[:len(body) - max(partial_suffix(body, m) for m in RESPONSE_STARTS)]
            return body or None, None
        end, marker = min(found)
        return body[:end] or None, body[end + len(marker):] or None
