"""gpt-oss (``openai_gptoss``): OpenAI's harmony messages; the ``analysis`` channel is the
reasoning, the other channels (``final``, and ``commentary`` preambles) the content.

As vLLM's (its harmony branch, which ``--reasoning-parser openai_gptoss`` switches on for
gpt-oss): the analysis messages' bodies are the reasoning and every other message's body the
content, each joined with newlines; a message cut off by the end of the output counts with what
it has; the headers and special tokens are dropped. With ``--tool-call-parser openai`` the
content and the calls come from the tool parser (calls out of the content); without it, a
call's JSON is content, as in vLLM. The harmony markers are special tokens, so special tokens
stay in the text (``skip_special_tokens`` false) with this parser. Output that does not start
with a harmony header (``<|channel|>``, ``<|start|>``, ``to=``) is all content.

Where vLLM's streamed and non-streamed replies differ (a stream concatenates messages with
nothing between them), both here are the non-streamed one (newline-joined). The prompt counts
only where it ends inside a header (``...<|channel|>final<|message|>``, a template that opens
the message): the output is then that message's body.

The reasoning does not end at one token (``<|channel|>final<|message|>`` is three), so the
engine core cannot start a constraint after it: structured outputs are refused with this parser.
"""

from __future__ import annotations

from pagedlm.entrypoints.openai import harmony_text as harmony
from pagedlm.entrypoints.openai.reasoning.base import Mode, ReasoningParser


def open_header(prompt_text: str) -> str:
    """The header the prompt leaves open (its last message's ``...<|message|>`` with no body end)."""
    start = prompt_text.rfind(harmony.START)
    if start < 0:
        return ""
    tail = prompt_text[start:]
    begin = tail.find(harmony.MESSAGE)
    if begin < 0 or any(t in tail[begin:] for t in (harmony.END, harmony.CALL, harmony.RETURN)):
        return ""
    return tail[:begin + len(harmony.MESSAGE)]


class GptOssReasoningParser(ReasoningParser):
    start_token = "<|channel|>analysis<|message|>"
    end_token = "<|channel|>final<|message|>"
    token_markers = False
    keep_special_tokens = True

    def __init__(self, prompt_text: str | None = None) -> None:
        super().__init__(prompt_text)
        self.prefix = open_header(prompt_text or "")

    def initial_mode(self, prompt_text: str) -> Mode:
        return Mode.UNDECIDED

    def split(self, text: str, final: bool = True) -> tuple[str | None, str | None]:
        messages = harmony.parse_messages(self.prefix + text, final)
        if messages is None:
            if not final and harmony.may_open(text):
                return None, None
            return None, text or None
        return (harmony.join([m.body for m in messages if m.channel == "analysis"]),
                harmony.join([m.body for m in messages if m.channel != "analysis"]))
