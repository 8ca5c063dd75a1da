"""Step-3: special-token calls, each a ``steptml`` invoke::

    <｜tool_calls_begin｜><｜tool_call_begin｜>function<｜tool_sep｜><steptml:invoke name="get_weather">
    <steptml:parameter name="city">Paris</steptml:parameter>
    </steptml:invoke><｜tool_call_end｜><｜tool_calls_end｜>

As vLLM's ``step3``: the content is the text before ``<｜tool_calls_begin｜>`` and after
``<｜tool_calls_end｜>``, stripped at its end (vLLM's also strips its start, which a stream
cannot know to do: here leading whitespace stays). A call is each complete
``<｜tool_call_begin｜>function<｜tool_sep｜>...<｜tool_call_end｜>`` with an invoke's name; its
parameters' values are stripped text, made numbers / booleans / null where the tool's JSON
schema types them so (a value that does not convert stays text). Without such a call it is all
content. Where vLLM's streamed and non-streamed replies differ, both here are the streamed
one: calls count without ``<｜tool_calls_end｜>``. While streaming, a call is sent once its
invoke's name is complete, and its arguments once ``<｜tool_call_end｜>`` closes it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall

CALLS_BEGIN, CALLS_END = "<｜tool_calls_begin｜>", "<｜tool_calls_end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool_call_begin｜>", "<｜tool_call_end｜>", "<｜tool_sep｜>"
_INVOKE = re.compile(r'<steptml:invoke name="([^"]+)">')
_PARAMETER = re.compile(r'<steptml:parameter name="([^"]+)">([^<]*)</steptml:parameter>')


def _cast(value: str, kind: Any) -> Any:
    """vLLM's casts by the schema's ``type`` (only these; the rest stays text)."""
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value
    if kind == "boolean" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if kind == "null" and value.lower() == "null":
        return None
    return value


class Step3ToolParser(ToolParser):
    keep_special_tokens = True

    def _call(self, body: str, closed: bool) -> PartialCall | None:
        """One ``function<｜tool_sep｜><steptml:invoke ...`` body -> a call (None: not one, or
        its name is not complete yet)."""
        if SEP not in body:
            return None
        kind, invoke = body.split(SEP, 1)
        name = _INVOKE.search(invoke)
        if kind.strip() != "function" or name is None:
            return None
        if not closed:
            return PartialCall(name.group(1), "")
        params = self.tools.get(name.group(1))
        properties = (params.get("properties") or {}) if isinstance(params, dict) else {}
        arguments = {}
        for key, value in _PARAMETER.findall(invoke):
            spec = properties.get(key)
            arguments[key] = _cast(value.strip(), spec.get("type") if isinstance(spec, dict) else None)
        return PartialCall(name.group(1), json.dumps(arguments, ensure_ascii=False), complete=True)

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        content, block = self.split_at_marker(text, CALLS_BEGIN, final)
        if block is None:
            return (content if final else content.rstrip()) or None, []
        block, after = (block.split(CALLS_END, 1) + [""])[:2] if CALLS_END in block else (block, "")
        if not final and CALLS_END not in text:
            block = block[:len(block) - partial_suffix(block, CALLS_END)]
        calls: list[PartialCall] = []
        for part in block.split(CALL_BEGIN)[1:]:
            closed = CALL_END in part
            if not (closed or final):
                call = self._call(part, closed=False)
                calls.extend([call] if call is not None else [])
                break
            call = self._call(part.split(CALL_END, 1)[0], closed=True) if closed else None
            calls.extend([call] if call is not None else [])
        if final and not calls:
            return text or None, []
        return (content + after).rstrip() or None, calls
