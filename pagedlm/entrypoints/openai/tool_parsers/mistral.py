"""Mistral: content, then ``[TOOL_CALLS]`` and a JSON array of ``{"name", "arguments"}``."""

from __future__ import annotations

from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, scan_call_array, skip_ws

MARKER = "[TOOL_CALLS]"


class MistralToolParser(ToolParser):
    keep_special_tokens = True

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        content, rest = self.split_at_marker(text, MARKER, final)
        calls: list[PartialCall] = []
        if rest is not None:
            calls, _ = scan_call_array(rest, skip_ws(rest, 0))
        return self.finish(content, calls, text, final)
