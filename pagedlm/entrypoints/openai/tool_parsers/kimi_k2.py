"""Kimi-K2: special-token calls in a section, each with the id the model gives it::

    <|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>
    {"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>

As vLLM's ``kimi_k2``: content is the text before ``<|tool_calls_section_begin|>`` (what follows
the section is dropped); a call is each complete ``<|tool_call_begin|>ID<|tool_call_argument_begin|>
ARGS<|tool_call_end|>`` whose ID is ``...NAME:INDEX`` (the name is what follows the last ``.``
before the ``:``); its arguments are taken as written (stripped, not checked to be JSON) and its
id is the ID as written (``functions.NAME:INDEX``, the shape Kimi's chat template writes back).
A section without such a call leaves the content before it and no calls. While streaming, a
call is sent once ``<|tool_call_argument_begin|>`` follows its ID, then its arguments as they
grow (trailing whitespace and a partial ``<|tool_call_end|>`` held back).
"""

from __future__ import annotations

import re

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall

SECTION_BEGIN = "<|tool_calls_section_begin|>"
CALL_BEGIN, ARGS_BEGIN, CALL_END = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"
_CALL = re.compile(r"<\|tool_call_begin\|>\s*(?P<id>[^<]+:\d+)\s*<\|tool_call_argument_begin\|>\s*"
                   r"(?P<arguments>(?:(?!<\|tool_call_begin\|>).)*?)\s*<\|tool_call_end\|>", re.DOTALL)
_HEADER = re.compile(r"\s*(?P<id>[^<]+:\d+)\s*<\|tool_call_argument_begin\|>\s*")


def _name(call_id: str) -> str:
    return call_id.split(":")[0].split(".")[-1]


def _open_call(segment: str) -> PartialCall | None:
    """The call being written (after its ``<|tool_call_begin|>``), once its ID is complete."""
    match = _HEADER.match(segment)
    if match is None:
        return None
    arguments = segment[match.end():]
    arguments = arguments[:len(arguments) - partial_suffix(arguments, CALL_END)].rstrip()
    call_id = match.group("id").strip()
    return PartialCall(_name(call_id), arguments, id=call_id)


class KimiK2ToolParser(ToolParser):
    keep_special_tokens = True

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        content, section = self.split_at_marker(text, SECTION_BEGIN, final)
        if section is None:
            return content or None, []
        calls, end = [], 0
        for match in _CALL.finditer(section):
            call_id = match.group("id").strip()
            calls.append(PartialCall(_name(call_id), match.group("arguments"), True, id=call_id))
            end = match.end()
        if not final:
            begin = section.find(CALL_BEGIN, end)
            if begin >= 0 and section.find(CALL_END, begin) < 0:
                call = _open_call(section[begin + len(CALL_BEGIN):])
                if call is not None:
                    calls.append(call)
        return content or None, calls
