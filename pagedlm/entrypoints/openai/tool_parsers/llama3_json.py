"""Llama 3.x JSON tool calls: the whole output is ``{"name": ..., "parameters": {...}}``
(optionally after ``<|python_tag|>``), several separated by ``;``. Text that does not start
with ``{`` is content."""

from __future__ import annotations

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, scan_call_object, skip_ws

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        body = text[len(PYTHON_TAG):] if text.startswith(PYTHON_TAG) else text
        pos = skip_ws(body, 0)
        if not final and (pos == len(body) or PYTHON_TAG.startswith(body)):
            return None, []  # undecided yet
        if pos >= len(body) or body[pos] != "{":
            return self.finish(text, [], text, final) if final else (text, [])
        calls: list[PartialCall] = []
        while pos < len(body):
            call, end = scan_call_object(body, pos)
            calls.append(call)
            if end is None:
                break
            pos = skip_ws(body, end)
            if pos < len(body) and body[pos] == ";":
                pos = skip_ws(body, pos + 1)
        return self.finish(None, calls, text, final)
