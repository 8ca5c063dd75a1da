"""DeepSeek-V3 (and R1-0528): special-token calls, the arguments in a fenced JSON line::

    <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather
    ```json
    {"city": "Tokyo"}
    ```<｜tool▁call▁end｜><｜tool▁calls▁end｜>

As vLLM's ``deepseek_v3``: content is the text before ``<｜tool▁calls▁begin｜>`` (what follows
the calls is dropped); a call is each complete ``<｜tool▁call▁begin｜>...<｜tool▁call▁end｜>``
whose arguments fit on one line, taken as written (not checked to be JSON). A marker without
such a call leaves the content before it and no calls.
"""

from __future__ import annotations

import re

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALL_BEGIN, CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"
ARGS_OPEN, ARGS_CLOSE = "```json\n", "\n```" + CALL_END
# No DOTALL: the type, the name and the arguments are each one line.
_CALL = re.compile(r"<｜tool▁call▁begin｜>(?P<type>.*)<｜tool▁sep｜>(?P<function_name>.*)\n```json\n"
                   r"(?P<function_arguments>.*)\n```<｜tool▁call▁end｜>")
_NAME = re.compile(r"(?P<type>.*)<｜tool▁sep｜>(?P<function_name>.*)\n")


def _open_call(segment: str) -> PartialCall | None:
    """The call being written (after its ``<｜tool▁call▁begin｜>``): its name once the name's line
    ends, and the arguments' line so far (without a tail that may be the closing fence)."""
    match = _NAME.match(segment)
    if match is None:
        return None
    rest = segment[match.end():]
    if not rest.startswith(ARGS_OPEN):
        return PartialCall(match.group("function_name"), "") if ARGS_OPEN.startswith(rest) else None
    arguments = rest[len(ARGS_OPEN):]
    arguments = arguments[:len(arguments) - partial_suffix(arguments, ARGS_CLOSE)]
    return PartialCall(match.group("function_name"), arguments.split("\n", 1)[0])


class DeepSeekV3ToolParser(ToolParser):
    keep_special_tokens = True
    calls_begin = CALLS_BEGIN

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        content, rest = self.split_at_marker(text, self.calls_begin, final)
        if rest is None:
            return content or None, []
        calls, end = [], 0
        for match in _CALL.finditer(text):
            calls.append(PartialCall(match.group("function_name"), match.group("function_arguments"), True))
            end = match.end()
        if not final:
            begin = text.find(CALL_BEGIN, max(end, len(content) + len(self.calls_begin)))
            call = _open_call(text[begin + len(CALL_BEGIN):]) if begin >= 0 else None
            if call is not None:
                calls.append(call)
        return content or None, calls
