"""DeepSeek-V3.1: special-token calls, the arguments right after the name (no fence)::

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Tokyo"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>

As vLLM's ``deepseek_v31``: content is the text before ``<｜tool▁calls▁begin｜>`` (what follows
the calls is dropped); a call is each complete ``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS
<｜tool▁call▁end｜>`` on one line, its arguments taken as written (not checked to be JSON). A
marker without such a call leaves the content before it and no calls. While streaming, a call
is sent once ``<｜tool▁sep｜>`` follows its name, then its arguments as they grow.
"""

from __future__ import annotations

import re

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALL_BEGIN, SEP, CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"
# No DOTALL: the name and the arguments are on the call's one line.
_CALL = re.compile(r"<｜tool▁call▁begin｜>(?P<name>.*?)<｜tool▁sep｜>(?P<arguments>.*?)<｜tool▁call▁end｜>")


def _open_call(segment: str) -> PartialCall | None:
    """The call being written (after its ``<｜tool▁call▁begin｜>``), once its name is complete."""
    sep = segment.find(SEP)
    if sep < 0 or "\n" in segment[:sep]:
        return None
    arguments = segment[sep + len(SEP):]
    arguments = arguments[:len(arguments) - partial_suffix(arguments, CALL_END)]
    return PartialCall(segment[:sep], arguments.split("\n", 1)[0])


class DeepSeekV31ToolParser(ToolParser):
    keep_special_tokens = True

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        content, rest = self.split_at_marker(text, CALLS_BEGIN, final)
        if rest is None:
            return content or None, []
        calls, end = [], len(content) + len(CALLS_BEGIN)
        for match in _CALL.finditer(text, end):
            calls.append(PartialCall(match.group("name"), match.group("arguments"), True))
            end = match.end()
        if not final:
            begin = text.find(CALL_BEGIN, end)
            call = _open_call(text[begin + len(CALL_BEGIN):]) if begin >= 0 else None
            if call is not None:
                calls.append(call)
        return content or None, calls
