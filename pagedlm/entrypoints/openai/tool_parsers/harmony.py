"""gpt-oss (``openai``): calls are harmony messages addressed to a function::

    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>

(the ``to=functions.NAME`` may also come before ``<|channel|>``). As vLLM's ``openai``: each
message whose recipient is ``functions.NAME`` (commentary or analysis channel) is a call of NAME
with the message's body as its arguments; the content is the ``final`` channel's text and the
``commentary`` messages without a recipient (preambles shown to the user), joined with newlines;
the ``analysis`` channel is reasoning (the ``openai_gptoss`` reasoning parser gives it) and other
recipients (built-in tools) are dropped. This parser reads the whole output, not what a reasoning
parser leaves of it. Special tokens stay in the text (``skip_special_tokens`` false).

``<|call|>`` is a stop token, so the last call usually ends with the output: at the end, a call
the output stops inside is kept when its arguments are valid JSON (one cut off by max_tokens is
dropped, as vLLM drops an unfinished message). While streaming, a call is sent once its header
is complete (``<|message|>``), then its arguments as they grow.

Where vLLM differs: its non-streamed reply re-serializes JSON arguments (``json.dumps``) and its
content is the last final message (else the last preamble); here the arguments are the text the
model wrote (so a stream's fragments concatenate to them) and the content is every final and
preamble message, newline-joined (vLLM's stream concatenates them with nothing between).
Output that is not harmony is all content. As with the ``openai_gptoss`` reasoning parser, a
prompt that ends inside a header (``...to=functions.get_weather <|constrain|>json<|message|>``,
a template or a prefill that opens the message) makes the output that message's body.
"""

from __future__ import annotations

from pagedlm.entrypoints.openai import harmony_text as harmony
from pagedlm.entrypoints.openai.reasoning.gpt_oss import open_header
from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, is_valid_json

FUNCTIONS = "functions."


class OpenAIHarmonyToolParser(ToolParser):
    keep_special_tokens = True
    whole_output = True
    prefix = ""  # the header the prompt leaves open

    def set_prompt(self, prompt_text: str | None) -> None:
        self.prefix = open_header(prompt_text or "")

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        messages = harmony.parse_messages(self.prefix + text, final)
        if messages is None:
            if not final and harmony.may_open(text):
                return None, []
            return text or None, []
        content: list[str] = []
        calls: list[PartialCall] = []
        for message in messages:
            recipient = message.recipient or ""
            if recipient.startswith(FUNCTIONS):
                name = recipient[len(FUNCTIONS):]
                if not name:
                    continue
                if message.closed or (final and is_valid_json(message.body)):
                    calls.append(PartialCall(name, message.body, True))
                elif not final:
                    calls.append(PartialCall(name, message.body))
            elif message.channel == "final" or (message.channel == "commentary" and not message.recipient):
                content.append(message.body)
        return harmony.join(content), calls
