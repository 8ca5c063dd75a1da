"""Pythonic (Llama 3.2 / 4, ToolACE): the output is a Python list of calls,
``[get_weather(city="Paris"), add(a=1, b=2)]``, keyword arguments with literal values.

A call is streamed once its closing parenthesis has arrived (its arguments are converted
from Python literals to JSON, so they cannot be forwarded character by character)."""

from __future__ import annotations

import ast
import json

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall


def _element_ends(body: str) -> tuple[list[tuple[int, int]], bool]:
    """Spans of the complete top-level elements of ``[a, b, ...`` and whether ``]`` closed it."""
    spans, depth, start, quote, i = [], 0, 1, None, 1
    while i < len(body):
        ch = body[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}" and depth > 0:
            depth -= 1
        elif ch in ",]" and depth == 0:
            spans.append((start, i))
            if ch == "]":
                return spans, True
            start = i + 1
        i += 1
    return spans, False


def _to_call(source: str) -> PartialCall | None:
    try:
        node = ast.parse(source.strip(), mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)) or node.args:
            return None
        args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        name = ast.unparse(node.func)
        return PartialCall(name, json.dumps(args, ensure_ascii=False), complete=True)
    except (SyntaxError, ValueError, TypeError):
        return None


class PythonicToolParser(ToolParser):
    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        body = text.strip()
        if not body.startswith("["):
            if not final and not body:
                return None, []
            return text or None, []
        spans, closed = _element_ends(body)
        calls: list[PartialCall] = []
        for start, end in spans:
            call = _to_call(body[start:end]) if body[start:end].strip() else None
            if call is None:  # not a call: the output is text after all
                return (text or None, []) if final else (None, calls)
            calls.append(call)
        if final and not closed:
            return text or None, []
        return self.finish(None, calls, text, final)
