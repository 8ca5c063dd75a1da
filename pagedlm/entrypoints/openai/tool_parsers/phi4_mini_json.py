"""Phi-4-mini: ``functools[{"name": ..., "arguments": {...}}, ...]`` anywhere in the output.

As vLLM's ``phi4_mini_json``: when the list holds calls, the content is null (text around
``functools[...]`` is dropped); each call's ``arguments`` (or ``parameters``) is re-serialized
with ``json.dumps(..., ensure_ascii=False)``; an element without a name or arguments makes the
whole output content. vLLM's parser streams nothing; here a stream holds the text back and
sends the answer when the output ends (text before ``functools[`` may still be dropped).

Unlike vLLM's (whose regex stops at the first ``]``), the list ends at its matching bracket,
so arguments holding arrays parse; a list that is not valid JSON, or an empty one, leaves
the output as content (vLLM's reply has neither content nor calls then).
"""

from __future__ import annotations

import json

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, value_end

MARKER = "functools"


def _calls(text: str) -> list[PartialCall] | None:
    start = text.find(MARKER + "[")
    if start < 0:
        return None
    start += len(MARKER)
    end = value_end(text, start)
    if end is None:
        return None
    try:
        items = json.loads(text[start:end])
        return [PartialCall(item["name"], json.dumps(item["arguments"] if "arguments" in item else item["parameters"],
                                                     ensure_ascii=False), complete=True) for item in items] or None
    except (ValueError, KeyError, TypeError):
        return None


class Phi4MiniJsonToolParser(ToolParser):
    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        if not final:
            return None, []
        calls = _calls(text)
        return (None, calls) if calls else (text or None, [])
