"""Mistral: content, then ``[TOOL_CALLS]`` and the calls, in one of two shapes:

- tokenizers before v11 (Mistral 7B v0.3, Nemo): a JSON array of ``{"name", "arguments"}``,
  ``[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}]``;
- v11 and later (Mistral Small 3.2, Magistral, Devstral): each call is ``[TOOL_CALLS]``, the
  name, optionally ``[ARGS]``, then the arguments' JSON object:
  ``[TOOL_CALLS]add{"a": 1}[TOOL_CALLS]mul[ARGS]{"b": 2}``.

Call ids are 9 letters and digits: Mistral's chat templates (and mistral_common) refuse any
other id when the calls come back in the next request's history (as vLLM's MistralToolCall).
"""

from __future__ import annotations

import random
import re
import string

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import (PartialCall, scan_call_array, skip_ws,
                                                               value_end)

MARKER = "[TOOL_CALLS]"
ARGS = "[ARGS]"
_NAME = re.compile(r"[a-zA-Z0-9_-]+")
_ID_CHARS = string.ascii_letters + string.digits


def _v11_calls(rest: str, final: bool) -> list[PartialCall]:
    calls: list[PartialCall] = []
    for segment in rest.split(MARKER):
        match = _NAME.match(segment)
        after = segment[match.end():] if match else segment
        if match is None or (not final and (not after or (ARGS.startswith(after) and after != ARGS))):
            calls.append(PartialCall())  # not a name, or one that may still grow: no call yet
            break
        name = match.group()
        if after.startswith(ARGS):
            after = after[len(ARGS):]
        start = skip_ws(after, 0)
        if start >= len(after):  # a call without arguments (final) or before them
            calls.append(PartialCall(name, None, complete=final))
            if not final:
                break
            continue
        if after[start] != "{":
            calls.append(PartialCall(name))  # not the arguments' object: the output is text
            break
        end = value_end(after, start)
        calls.append(PartialCall(name, after[start:end] if end is not None else after[start:], end is not None))
        if end is None:
            break
    return calls


class MistralToolParser(ToolParser):
    keep_special_tokens = True

    @staticmethod
    def new_call_id() -> str:
        return "".join(random.choices(_ID_CHARS, k=9))

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        content, rest = self.split_at_marker(text, MARKER, final)
        calls: list[PartialCall] = []
        if rest is not None:
            start = skip_ws(rest, 0)
            if start < len(rest) and rest[start] == "[":
                calls, _ = scan_call_array(rest, start)
            elif start < len(rest) or final:
                calls = _v11_calls(rest, final)
        return self.finish(content, calls, text, final)
