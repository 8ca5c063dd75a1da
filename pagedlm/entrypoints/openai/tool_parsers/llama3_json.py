"""Llama 3.x / 4 JSON tool calls: ``{"name": ..., "parameters": {...}}`` (or ``"arguments"``),
optionally after ``<|python_tag|>``, several separated by ``;``; text after the calls is
dropped. An output that starts otherwise is content; but at its end, as vLLM's, calls written
after some text (``Here it is: {"name": ...}``) are still found, from its first ``{``, and
then the text around them is dropped. While streaming, such text is content up to a
``{"name"``; from there it is held back until the end decides (calls, or all content)."""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, scan_call_object, skip_ws

PYTHON_TAG = "<|python_tag|>"
CALL_START = '{"name"'


def _calls(body: str, pos: int) -> list[PartialCall]:
    calls: list[PartialCall] = []
    while pos < len(body) and body[pos] == "{":
        call, end = scan_call_object(body, pos)
        calls.append(call)
        if end is None:
            break
        pos = skip_ws(body, end)
        if pos < len(body) and body[pos] == ";":
            pos = skip_ws(body, pos + 1)
    return calls


class Llama3JsonToolParser(ToolParser):
    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        body = text[len(PYTHON_TAG):] if text.startswith(PYTHON_TAG) else text
        pos = skip_ws(body, 0)
        if not final and (pos == len(body) or PYTHON_TAG.startswith(body)):
            return None, []  # undecided yet
        if pos >= len(body) or body[pos] != "{":
            if not final:
                held = text.find(CALL_START)
                return text[:held if held >= 0 else len(text) - partial_suffix(text, CALL_START)] or None, []
            brace = body.find("{")
            content, calls = self.finish(None, _calls(body, brace) if brace >= 0 else [], text, final)
            return (None, calls) if calls else (text or None, [])
        return self.finish(None, _calls(body, pos), text, final)
