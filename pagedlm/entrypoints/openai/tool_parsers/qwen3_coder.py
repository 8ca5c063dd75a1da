"""Qwen3-Coder: XML calls, each parameter's value written as text and converted by the type
the tool's JSON schema gives it (as vLLM's ``qwen3_coder``)::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    <parameter=days>
    3
    </parameter>
    </function>
    </tool_call>

Content is the text before the first ``<tool_call>`` (or, without one, the first
``<function=``); text after the calls is dropped. ``</parameter>``, ``</function>`` and
``</tool_call>`` may be missing (the next tag or the end closes them). While streaming, a call
is sent once its name is complete, then its arguments one parameter at a time, as each closes:
the fragments are prefixes of the final ``json.dumps`` of the arguments.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall

TOOL_CALL, FUNCTION = "<tool_call>", "<function="
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*?)$", re.DOTALL)
_FUNCTION = re.compile(r"<function=(.*?)</function>|<function=(.*)$", re.DOTALL)
_PARAMETER = re.compile(r"<parameter=(.*?)(?:</parameter>|(?=<parameter=)|(?=</function>)|$)", re.DOTALL)
_CLOSERS = ("</parameter>", "<parameter=", "</function>")

_STRING_TYPES = ("string", "str", "text", "varchar", "char", "enum")
_INT_PREFIXES = ("int", "uint", "long", "short", "unsigned")


def convert_value(value: str, name: str, properties: dict[str, Any]) -> Any:
    """A parameter's text -> its value by the schema's type (vLLM's rules, exactly: unknown
    parameters and failed conversions stay strings, a bad boolean is false)."""
    if value.lower() == "null":
        return None
    if name not in properties:
        return value
    spec = properties[name]
    kind = str(spec["type"]).strip().lower() if isinstance(spec, dict) and "type" in spec else "string"
    if kind in _STRING_TYPES:
        return value
    if kind.startswith(_INT_PREFIXES):
        try:
            return int(value)
        except (ValueError, TypeError):
            return value
    if kind.startswith(("num", "float")):
        try:
            number = float(value)
            return number if number - int(number) != 0 else int(number)
        except (ValueError, TypeError):
            return value
    if kind in ("boolean", "bool", "binary"):
        return value.lower() == "true"
    if kind in ("object", "array", "arr") or kind.startswith(("dict", "list")):
        try:
            return json.loads(value)
        except ValueError:
            pass
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError):
        return value


def _function_texts(text: str, tool_call: re.Pattern = _TOOL_CALL) -> list[tuple[str, bool]]:
    """(text after ``<function=``, whether ``</function>`` closed it) of each call, in the
    ``<tool_call>`` blocks (``tool_call``) or, without any, in the whole text."""
    blocks = [m[0] or m[1] for m in tool_call.findall(text)] or [text]
    return [(m.group(1) if m.group(1) is not None else m.group(2), m.group(1) is not None)
            for block in blocks for m in _FUNCTION.finditer(block)]


class Qwen3CoderToolParser(ToolParser):
    keep_special_tokens = True
    tool_call, tool_call_re = TOOL_CALL, _TOOL_CALL  # the block's tag (Seed-OSS has its own)

    def _properties(self, name: str) -> dict[str, Any]:
        params = self.tools.get(name)
        if not isinstance(params, dict):
            return {}
        return params["properties"] if "properties" in params else params

    def _call(self, source: str, closed: bool, final: bool) -> PartialCall | None:
        """One ``name>...`` function text -> a call (None: its name is not complete yet)."""
        gt = source.find(">")
        if gt < 0:
            if final:
                raise ValueError("a function without '>' after its name")
            return None
        name, body = source[:gt], source[gt + 1:]
        properties = self._properties(name)
        arguments: dict[str, Any] = {}
        for match in _PARAMETER.finditer(body):
            ended = match.group(0).endswith("</parameter>") or body.startswith(_CLOSERS, match.end())
            if not (ended or closed or final):
                break  # the value may still grow
            raw = match.group(1)
            if ">" not in raw:
                if final:
                    raise ValueError("a parameter without '>' after its name")
                break
            key, value = raw[:raw.index(">")], raw[raw.index(">") + 1:]
            value = value[1:] if value.startswith("\n") else value
            value = value[:-1] if value.endswith("\n") else value
            arguments[key] = convert_value(value, key, properties)
        text = json.dumps(arguments, ensure_ascii=False)
        if not (closed or final):
            text = text[:-1]  # open: more parameters may follow
        return PartialCall(name, text, complete=True)

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        start = text.find(self.tool_call)
        start = start if start >= 0 else text.find(FUNCTION)
        if start < 0:
            if final:
                return text or None, []
            hold = max(partial_suffix(text, self.tool_call), partial_suffix(text, FUNCTION))
            return text[:len(text) - hold] or None, []
        try:
            calls = self._calls(text, final)
        except (ValueError, TypeError, OverflowError):  # as vLLM's: a malformed call makes it all text
            return text or None, []
        if final and not calls:
            return text or None, []
        return text[:start] or None, calls

    def _calls(self, text: str, final: bool) -> list[PartialCall]:
        calls: list[PartialCall] = []
        for source, closed in _function_texts(text, self.tool_call_re):
            call = self._call(source, closed, final)
            if call is None:
                break
            calls.append(call)
            if not (closed or final):
                break
        return calls
