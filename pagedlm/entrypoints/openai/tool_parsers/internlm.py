"""InternLM2 / 2.5: one call, a JSON object after two special tokens::

    <|action_start|><|plugin|>
    {"name": "get_weather", "parameters": {"city": "Paris"}}<|action_end|>

As vLLM's ``internlm``: content is the text before ``<|action_start|><|plugin|>``; the call is
the JSON object from the first ``{`` up to ``<|action_end|>`` (or the end), its arguments
``parameters`` (or ``arguments``, else ``{}``) re-serialized with ``json.dumps(...,
ensure_ascii=False)``; what follows ``<|action_end|>`` is dropped. If that is not such an
object, it is all content. The format has one call (vLLM fails on a second marker; here what
follows the first call is dropped). Since the arguments are not the text as written, a stream
sends the call whole once ``<|action_end|>`` (or the output's end) has come.
"""

from __future__ import annotations

import json

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall

ACTION_START, ACTION_END = "<|action_start|><|plugin|>", "<|action_end|>"


def _call(action: str) -> PartialCall:
    """The action's text -> the call (ValueError / KeyError / TypeError if it is not one)."""
    obj = json.loads(action[action.find("{"):])
    arguments = obj.get("parameters", obj.get("arguments", {}))
    name = obj["name"]
    if not isinstance(name, str):
        raise TypeError("the name is not a string")
    return PartialCall(name, json.dumps(arguments, ensure_ascii=False), complete=True)


class InternLMToolParser(ToolParser):
    keep_special_tokens = True

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        content, action = self.split_at_marker(text, ACTION_START, final)
        if action is None:
            return content or None, []
        end = action.find(ACTION_END)
        if end < 0 and not final:
            return content or None, []  # the call is still being written
        try:
            call = _call(action if end < 0 else action[:end])
        except (ValueError, KeyError, TypeError, AttributeError):
            return (text or None, []) if final else (content or None, [])
        return content or None, [call]
