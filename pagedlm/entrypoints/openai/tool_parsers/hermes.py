"""Hermes / Qwen: ``<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>``, any number."""

from __future__ import annotations

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, scan_call_object, skip_ws

START, END = "<tool_call>", "</tool_call>"


class HermesToolParser(ToolParser):
    keep_special_tokens = True
    start = START  # the tag before each call's JSON

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        content, rest = self.split_at_marker(text, self.start, final)
        calls: list[PartialCall] = []
        while rest is not None:
            start = skip_ws(rest, 0)
            call, end = scan_call_object(rest, start)
            if start < len(rest):
                calls.append(call)
            if end is None:
                break
            _, rest = self.split_at_marker(rest[end:], self.start, final)
        return self.finish(content, calls, text, final)
