"""IBM Granite 3.0 / 3.1: the output is ``<|tool_call|>`` (3.0's special token) or
``<tool_call>`` (3.1's string), then a JSON list of ``{"name": ..., "arguments": {...}}``.

As vLLM's ``granite``: the whole output (stripped, after the marker) must be that list and
nothing else, or it is all content; each call's arguments are re-serialized with
``json.dumps`` (ASCII escapes, default separators). Since the arguments are not the text as
written, a stream sends each call whole once its object has closed.
"""

from __future__ import annotations

import json

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, skip_ws, value_end

BOT_TOKEN, BOT_STRING = "<|tool_call|>", "<tool_call>"


def _body(text: str) -> str:
    return text.strip().removeprefix(BOT_TOKEN).removeprefix(BOT_STRING).lstrip()


def _to_call(item: object) -> PartialCall:
    """One list element -> a call (KeyError / TypeError if it is not a call, as vLLM's)."""
    return PartialCall(item["name"], json.dumps(item["arguments"]), complete=True)  # type: ignore[index]


def _closed_items(body: str) -> list[PartialCall] | None:
    """The calls whose objects have closed in ``[{...}, {...``; None if one is not a call."""
    calls: list[PartialCall] = []
    pos = skip_ws(body, 1)
    while pos < len(body) and body[pos] != "]":
        end = value_end(body, pos)
        if end is None:
            break
        try:
            calls.append(_to_call(json.loads(body[pos:end])))
        except (ValueError, KeyError, TypeError):
            return None
        pos = skip_ws(body, end)
        if pos < len(body) and body[pos] == ",":
            pos = skip_ws(body, pos + 1)
    return calls


class GraniteToolParser(ToolParser):
    keep_special_tokens = True

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        body = _body(text)
        if final:
            return self._final(text, body)
        if not body or BOT_TOKEN.startswith(body) or BOT_STRING.startswith(body) or (
                body.startswith(BOT_TOKEN) and BOT_STRING.startswith(body[len(BOT_TOKEN):].lstrip())):
            return None, []  # undecided: may still become the marker and a list
        if body[0] != "[":
            return text or None, []
        return None, _closed_items(body) or []

    @staticmethod
    def _final(text: str, body: str) -> tuple[str | None, list[PartialCall]]:
        if not body or body[0] != "[":
            return text or None, []
        try:
            items = json.loads(body)
            if not isinstance(items, list):
                raise TypeError("not a list")
            return None, [_to_call(item) for item in items]
        except (ValueError, KeyError, TypeError):
            return text or None, []
