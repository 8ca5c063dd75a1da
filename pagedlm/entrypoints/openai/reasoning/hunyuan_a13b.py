"""Hunyuan-A13B: ``<think>\n...\n</think>\n<answer>\n...\n</answer>``, the markers written as
text (with their newlines), ``<think>\n\n</think>\n<answer>\n`` when it thinks nothing.

As vLLM's ``hunyuan_a13b`` (whose stream is a state machine over the marker sequences): text
outside a block is content, ``<think>\n`` opens the reasoning, ``\n</think>\n<answer>\n``
switches to the answer (content) and ``\n</answer>`` closes it; the markers themselves are
dropped. The prompt does not matter. Where vLLM's non-streamed reply differs (it drops text
after ``\n</answer>``), both here are the streamed one.

The markers are not single tokens, so the engine core cannot tell where the reasoning ends:
structured outputs are refused with this parser.
"""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import Mode, ReasoningParser, partial_suffix

THINK_START, RESPONSE_START, RESPONSE_END = "<think>\n", "\n</think>\n<answer>\n", "\n</answer>"
# state -> (the marker that ends it, the next state); 0 outside, 1 reasoning, 2 answer
_NEXT = {0: (THINK_START, 1), 1: (RESPONSE_START, 2), 2: (RESPONSE_END, 0)}


class HunyuanA13BReasoningParser(ReasoningParser):
    start_token = THINK_START
    end_token = RESPONSE_START
    token_markers = False

    def initial_mode(self, prompt_text: str) -> Mode:
        return Mode.UNDECIDED

    def split(self, text: str, final: bool = True) -> tuple[str | None, str | None]:
        reasoning: list[str] = []
        content: list[str] = []
        state, pos = 0, 0
        while True:
            marker, following = _NEXT[state]
            index = text.find(marker, pos)
            if index < 0:
                tail = text[pos:]
                (reasoning if state == 1 else content).append(
                    tail[:len(tail) - (0 if final else partial_suffix(tail, marker))])
                break
            (reasoning if state == 1 else content).append(text[pos:index])
            state, pos = following, index + len(marker)
        return "".join(reasoning) or None, "".join(content) or None
