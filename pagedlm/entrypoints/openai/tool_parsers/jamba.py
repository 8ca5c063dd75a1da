"""Jamba: a JSON array of calls between special tokens::

    <tool_calls>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_calls>

As vLLM's ``jamba``: content is the text before ``<tool_calls>`` (none when it is only
whitespace: vLLM's drops "" and " "); what follows ``</tool_calls>`` is dropped. The array
must be closed by ``</tool_calls>`` and each of its calls have a ``name`` and ``arguments``,
else it is all content. Arguments are taken as written; while streaming, a call is sent once
its name is complete, then its arguments as they grow.
"""

from __future__ import annotations

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, is_valid_json, scan_call_array, skip_ws

START, END = "<tool_calls>", "</tool_calls>"


def tagged_array(rest: str) -> tuple[list[PartialCall], int | None]:
    """The ``[...]`` after ``<tool_calls>`` -> (calls so far, end of ``</tool_calls>`` or None
    while it has not come; -1 when what follows is not such an array and its end tag)."""
    start = skip_ws(rest, 0)
    if start < len(rest) and rest[start] != "[":
        return [], -1
    calls, end = scan_call_array(rest, start)
    if end is None:
        return calls, None
    after = skip_ws(rest, end)
    if rest.startswith(END, after):
        return calls, after + len(END)
    return calls, (None if END.startswith(rest[after:]) else -1)


def valid(call: PartialCall) -> bool:
    return call.complete and isinstance(call.name, str) and is_valid_json(call.arguments)


class JambaToolParser(ToolParser):
    keep_special_tokens = True

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        content, rest = self.split_at_marker(text, START, final)
        content = content if content.strip() else ""
        if rest is None:
            return (text if final else content) or None, []
        calls, end = tagged_array(rest)
        if not final:
            return content or None, [c for c in calls if isinstance(c.name, str)]
        if end is None or end < 0 or not calls or not all(valid(c) for c in calls):
            return text or None, []
        return content or None, calls
