"""LongCat-Flash: Hermes's JSON calls under LongCat's own tags::

    <longcat_tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</longcat_tool_call>

As vLLM's ``longcat`` (its Hermes parser with these tags): content is the text before the
first ``<longcat_tool_call>``; each tag is followed by one call object, any number of them.
"""

from __future__ import annotations

from pagedlm.entrypoints.openai.tool_parsers.hermes import HermesToolParser


class LongcatToolParser(HermesToolParser):
    start = "<longcat_tool_call>"
