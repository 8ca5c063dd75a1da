"""MiniMax-M1: calls as JSON lines in ``<tool_calls>`` blocks::

    <tool_calls>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    {"name": "get_time", "arguments": {"tz": "UTC"}}
    </tool_calls>

As vLLM's ``minimax``: blocks inside a closed ``<think>...</think>`` are not calls; the content
is the text before the first other ``<tool_calls>``, stripped at its end (vLLM's also strips
its start, which a stream cannot know to do: here leading whitespace stays). In each block
(closed by ``</tool_calls>`` or the end), every line that is a JSON object with ``name`` and
``arguments`` is a call; other lines are skipped. Arguments are taken as written. While
streaming, a call is sent once its name is complete, then its arguments as they grow; a block
inside a ``<think>`` not yet closed is held back.
"""

from __future__ import annotations

import json

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, is_valid_json, scan_call_object

START, END = "<tool_calls>", "</tool_calls>"
THINK_START, THINK_END = "<think>", "</think>"


def _in_think(text: str, pos: int, final: bool) -> bool:
    """Whether ``pos`` is inside ``<think>...</think>`` (while streaming, also an open one)."""
    opened = text.rfind(THINK_START, 0, pos)
    if opened < 0 or text.find(THINK_END, opened) == -1:
        return opened >= 0 and not final
    return text.find(THINK_END, opened) > pos


def _line_call(line: str, whole: bool) -> PartialCall | None:
    """One line -> a call: a complete JSON object with name and arguments (``whole``), or, for
    the line being written, the call so far once its name is complete."""
    if not line.startswith("{"):
        return None
    call, end = scan_call_object(line, 0, ("arguments",))
    if whole:
        if end != len(line) or not is_valid_json(line) or call.arguments is None:
            return None
        obj = json.loads(line)
        if not isinstance(obj.get("name"), str) or "arguments" not in obj:
            return None
    return call if isinstance(call.name, str) else None


class MinimaxToolParser(ToolParser):
    keep_special_tokens = True

    def _first_start(self, text: str, final: bool) -> int:
        pos = text.find(START)
        while pos >= 0 and _in_think(text, pos, final):
            pos = text.find(START, pos + 1)
        return pos

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        first = self._first_start(text, final)
        if first < 0:
            if final:
                return text or None, []
            hold = partial_suffix(text, START)
            return text[:len(text) - hold].rstrip() or None, []
        calls: list[PartialCall] = []
        pos = first
        while pos >= 0:
            body_start = pos + len(START)
            end = text.find(END, body_start)
            body = text[body_start:] if end < 0 else text[body_start:end]
            if end < 0 and not final:
                body = body[:len(body) - partial_suffix(body, END)]
            lines = body.split("\n")
            for i, line in enumerate(lines):
                writing = i == len(lines) - 1 and end < 0 and not final  # may still grow
                call = _line_call(line.strip() if not writing else line.lstrip(), whole=not writing)
                calls.extend([call] if call is not None else [])
            if end < 0:
                break
            pos = text.find(START, end)
            while pos >= 0 and _in_think(text, pos, final):
                pos = text.find(START, pos + 1)
        return text[:first].rstrip() or None, calls
