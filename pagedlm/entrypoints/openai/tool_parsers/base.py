"""ToolParser: a model's raw output -> (content, tool calls), whole or streamed.

``parse(text, final)`` sees the whole output so far. While streaming (final=False) it returns
what is certain: content that cannot be the start of a tool call marker, and calls whose name
is complete with their raw argument text so far (always a prefix of the final arguments).
A stream sends the differences, so its fragments concatenate to the non-streaming answer.
At the end (final=True) a call is kept only if it is complete and its arguments are valid
JSON; if the output does not hold valid calls, it is all content (as vLLM does).
"""

from __future__ import annotations

import uuid

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, is_valid_json


class ToolParser:
    # The parser needs the model's special tokens in the text: its markers are special tokens
    # in some tokenizers ([TOOL_CALLS] in Mistral's, <tool_call> in some Hermes ones), which
    # skip_special_tokens would drop before the parser sees them (vLLM's adjust_request).
    keep_special_tokens = False
    # The parser reads the whole output, not the content a reasoning parser leaves of it
    # (gpt-oss's harmony: the calls sit beside the reasoning in channels it tells apart).
    whole_output = False

    def __init__(self, tools: dict[str, dict] | None = None) -> None:
        # The request's functions: name -> parameters' JSON schema (some formats write
        # arguments as text and convert them by the schema's types, as Qwen3-Coder's).
        self.tools = tools or {}

    def set_prompt(self, prompt_text: str | None) -> None:
        """The prompt's text, for a format whose prompt may end inside the output's first
        message (harmony's open header); the others ignore it."""

    @staticmethod
    def new_call_id() -> str:
        """A tool call's id (OpenAI's ``call_...``; some chat templates want another shape)."""
        return f"call_{uuid.uuid4().hex[:24]}"

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        raise NotImplementedError

    @staticmethod
    def split_at_marker(text: str, marker: str, final: bool) -> tuple[str, str | None]:
        """(content before the marker, the rest after it or None). Without the marker, a tail
        that may be the marker's beginning is held back while streaming."""
        index = text.find(marker)
        if index >= 0:
            return text[:index], text[index + len(marker):]
        hold = 0 if final else partial_suffix(text, marker)
        return text[: len(text) - hold], None

    @staticmethod
    def finish(content: str | None, calls: list[PartialCall], text: str, final: bool
               ) -> tuple[str | None, list[PartialCall]]:
        """Streaming: calls with a name. Final: only valid complete calls, else all content."""
        if not final:
            return content or None, [c for c in calls if c.name is not None]
        if not calls or not all(c.complete and c.name and is_valid_json(c.arguments or "{}") for c in calls):
            return text or None, []
        for call in calls:
            call.arguments = call.arguments or "{}"
        return content or None, calls
