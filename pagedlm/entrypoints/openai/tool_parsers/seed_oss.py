"""Seed-OSS: Qwen3-Coder's XML calls in ``<seed:tool_call>`` blocks::

    <seed:tool_call>
    <function=get_weather>
    <parameter=city>Paris</parameter>
    </function>
    </seed:tool_call>

As vLLM's ``seed_oss``: parameters are converted by the tool's JSON schema as in
``qwen3_coder`` (which see for the rest). When the output still holds the model's thinking
(``<seed:think>...</seed:think>``, no reasoning parser), calls are only looked for after
``</seed:think>``, and the thinking stays in the content; while the thinking is open nothing
in it is taken for a call.
"""

from __future__ import annotations

import re

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall
from pagedlm.entrypoints.openai.tool_parsers.qwen3_coder import Qwen3CoderToolParser

THINK_START, THINK_END = "<seed:think>", "</seed:think>"


class SeedOssToolParser(Qwen3CoderToolParser):
    tool_call = "<seed:tool_call>"
    tool_call_re = re.compile(r"<seed:tool_call>(.*?)</seed:tool_call>|<seed:tool_call>(.*?)$", re.DOTALL)

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        if THINK_START not in text:
            return super().parse(text, final)
        end = text.find(THINK_END)
        if end < 0:  # still thinking (or never closed: then as without thinking, as vLLM's)
            if final:
                return super().parse(text, final)
            return text[:len(text) - partial_suffix(text, THINK_END)] or None, []
        cut = end + len(THINK_END)
        content, calls = super().parse(text[cut:], final)
        return (text[:cut] + (content or "")) or None, calls
