"""Hunyuan-A13B: a JSON array of calls in ``<tool_calls>``::

    <tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls>

As vLLM's ``hunyuan_a13b``: the content is the text around the block (before it and after
``</tool_calls>``), cut after its last ``</think>`` if it holds one, none when only whitespace.
The block must be a closed JSON array, else it is all content; an element without ``name``
and ``arguments`` is skipped. Arguments are taken as written; ``arguments`` given as a JSON
string are that string (sent whole once the call closes). While streaming, a call is sent once
its name is complete, then its arguments as they grow.
"""

from __future__ import annotations

import json

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.jamba import START, tagged_array, valid
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall

THINK_END = "</think>"


def _content(text: str) -> str | None:
    if THINK_END in text:
        text = text[:text.rfind(THINK_END) + len(THINK_END)]
    return text if text.strip() else None


def _string_arguments(call: PartialCall) -> PartialCall:
    """``"arguments": "{...}"``: the string's value, once the call is complete."""
    if call.arguments is not None and call.arguments.startswith('"'):
        call.arguments = json.loads(call.arguments) if call.complete else ""
    return call


class HunyuanA13BToolParser(ToolParser):
    keep_special_tokens = True

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        before, rest = self.split_at_marker(text, START, final)
        if rest is None:
            return (text if final else _content(before)) or None, []
        calls, end = tagged_array(rest)
        after = rest[end:] if end is not None and end >= 0 else ""
        if not final:
            return _content(before + after), [_string_arguments(c) for c in calls if isinstance(c.name, str)]
        if end is None or end < 0:
            return text or None, []
        calls = [_string_arguments(c) for c in calls if valid(c)]
        return _content(before + after), calls
