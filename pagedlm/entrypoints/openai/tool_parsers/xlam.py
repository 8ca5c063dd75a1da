"""Salesforce xLAM: a JSON list of ``{"name": ..., "arguments": {...}}``, bare or in a fenced
```` ```json ```` block, after ``[TOOL_CALLS]``, in ``<tool_call>...</tool_call>``, or after
``</think>``.

As vLLM's ``xlam``: the first of these that is valid JSON is taken (after ``</think>`` first,
then each block form over the whole output, then an output that is the list itself); the
content is the output with the blocks of that form removed (stripped), the text up to
``</think>`` in that case, null for a bare list; elements without a name or arguments are
skipped; object arguments are re-serialized with ``json.dumps(..., ensure_ascii=False)``, string
ones kept as written. Anything else is all content.

Streaming: an output that starts with ``[`` sends each call once its object has closed; other
output is held back until it ends (a block later on changes what the content is), since a
stream cannot take back what it sent.
"""

from __future__ import annotations

import json
import re

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, is_valid_json, skip_ws, value_end

_BLOCKS = [re.compile(r"```(?:json)?\s*([\s\S]*?)```"), re.compile(r"\[TOOL_CALLS\]([\s\S]*?)(?=\n|$)"),
           re.compile(r"<tool_call>([\s\S]*?)</tool_call>")]
_THINK_END = re.compile(r"</think>([\s\S]*)")


def _preprocess(output: str) -> tuple[str | None, str | None]:
    """-> (content, the JSON text of the calls or None), as vLLM's preprocess_model_output."""
    think = _THINK_END.search(output)
    if think:
        content, after = output[:think.start() + len("</think>")].strip(), think.group(1).strip()
        if is_valid_json(after):
            return content, after
        for pattern in _BLOCKS:
            for found in pattern.findall(after):
                if is_valid_json(found):
                    return content, found
    for pattern in _BLOCKS:
        for found in pattern.findall(output):
            if is_valid_json(found):
                return pattern.sub("", output).strip(), found
    if output.strip().startswith("[") and (is_valid_json(output) or all(w in output for w in ("{", "name", "arguments"))):
        return None, output
    return output, None


def _to_call(item: object) -> PartialCall | None:
    """None for an element that is not a call (skipped); TypeError for arguments that are
    neither an object nor a string (vLLM's reply is then all content)."""
    if not isinstance(item, dict) or "name" not in item or "arguments" not in item:
        return None
    arguments = item["arguments"]
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments, ensure_ascii=False)
    elif not isinstance(arguments, str):
        raise TypeError("arguments must be an object or a string")
    return PartialCall(item["name"], arguments, complete=True)


class XlamToolParser(ToolParser):
    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        if final:
            return self._final(text)
        body = text.lstrip()
        if not body.startswith("["):
            return None, []
        calls, pos = [], skip_ws(body, 1)
        while pos < len(body) and body[pos] != "]":
            end = value_end(body, pos)
            if end is None:
                break
            try:
                call = _to_call(json.loads(body[pos:end]))
            except (ValueError, TypeError):
                return None, []
            if call is not None:
                calls.append(call)
            pos = skip_ws(body, end)
            if pos < len(body) and body[pos] == ",":
                pos = skip_ws(body, pos + 1)
        return None, calls

    @staticmethod
    def _final(text: str) -> tuple[str | None, list[PartialCall]]:
        content, calls_json = _preprocess(text)
        if not calls_json:
            return content or None, []
        try:
            items = json.loads(calls_json)
            if not isinstance(items, list):
                return (content or text) or None, []
            calls = [c for c in map(_to_call, items) if c is not None]
        except (ValueError, TypeError):
            return text or None, []
        return content or None, calls
