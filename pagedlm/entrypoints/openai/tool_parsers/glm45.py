"""GLM-4.5 / 4.6: XML calls, the function's name on the first line, then key / value pairs::

    <tool_call>get_weather
    <arg_key>city</arg_key>
    <arg_value>Paris</arg_value>
    <arg_key>days</arg_key>
    <arg_value>3</arg_value>
    </tool_call>

As vLLM's ``glm45``: content is the text before the first ``<tool_call>`` (none when it is only
whitespace); text between and after the calls is dropped. Each complete
``<tool_call>NAME\\n...</tool_call>`` is a call (a block without the newline after its name is
skipped), keys and values stripped; a value whose parameter the tool's JSON schema types
``string`` stays text, any other is read as JSON, else as a Python literal, else kept as text.
Without calls, or when one's arguments cannot be written as JSON, it is all content. Where
vLLM's streamed and non-streamed replies differ, both here are the streamed one: a last call
cut off before ``</tool_call>`` keeps its name and the pairs that closed. While
streaming, a call is sent once its name's line ends, then its arguments one pair at a time, as
each ``</arg_value>`` closes: the fragments are prefixes of the final ``json.dumps``.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall

TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"
_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)


def deserialize(value: str) -> Any:
    """vLLM's order: JSON, then a Python literal, else the text."""
    try:
        return json.loads(value)
    except ValueError:
        pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return value


class Glm45ToolParser(ToolParser):
    keep_special_tokens = True

    def _is_string(self, name: str, key: str) -> bool:
        params = self.tools.get(name)
        if not isinstance(params, dict):
            return False
        spec = (params.get("properties") or {}).get(key)
        return isinstance(spec, dict) and spec.get("type") == "string"

    def _call(self, body: str, closed: bool) -> PartialCall | None:
        """One ``NAME\\n<arg_key>...`` body -> a call (None: no name line yet, or an empty name)."""
        newline = body.find("\n")
        if newline < 0 or not body[:newline].strip():
            return None
        name = body[:newline].strip()
        arguments: dict[str, Any] = {}
        for key, value in _ARG.findall(body[newline + 1:]):
            key, value = key.strip(), value.strip()
            arguments[key] = value if self._is_string(name, key) else deserialize(value)
        text = json.dumps(arguments, ensure_ascii=False)
        return PartialCall(name, text if closed else text[:-1], complete=True)

    def _calls(self, text: str, final: bool) -> list[PartialCall]:
        calls: list[PartialCall] = []
        pos = 0
        while (start := text.find(TOOL_CALL, pos)) >= 0:
            body_start = start + len(TOOL_CALL)
            end = text.find(TOOL_CALL_END, body_start)
            if end < 0:  # cut off (or still being written): the pairs that closed
                body = text[body_start:]
                body = body if final else body[:len(body) - partial_suffix(body, TOOL_CALL_END)]
                call = self._call(body, closed=final)
                calls.extend([call] if call is not None else [])
                break
            call = self._call(text[body_start:end], closed=True)
            calls.extend([call] if call is not None else [])
            pos = end + len(TOOL_CALL_END)
        return calls

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        content, rest = self.split_at_marker(text, TOOL_CALL, final)
        if rest is None:
            if not final and not content.strip():
                return None, []  # only whitespace yet: dropped if a call follows
            return content or None, []
        try:
            calls = self._calls(text, final)
        except (ValueError, TypeError, OverflowError, RecursionError):  # as vLLM's: all content
            return text or None, []
        if final and not calls:
            return text or None, []
        return (content if content.strip() else None), calls
