"""Llama 4's pythonic calls: ``[get_weather(city="Paris")]``, as ``pythonic``, which Llama 4
sometimes wraps in ``<|python_start|>`` ... ``<|python_end|>``.

As vLLM's ``llama4_pythonic``: an output that starts with ``<|python_start|>`` is read without
it and without ``<|python_end|>`` (also when it turns out to be text, which is then the
content without them).
"""

from __future__ import annotations

from pagedlm.entrypoints.openai.reasoning.base import partial_suffix
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall
from pagedlm.entrypoints.openai.tool_parsers.pythonic import PythonicToolParser

PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"


class Llama4PythonicToolParser(PythonicToolParser):
    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        if not final and text and PYTHON_START.startswith(text):
            return None, []  # may be the wrapper's start
        if text.startswith(PYTHON_START):
            text = text[len(PYTHON_START):].replace(PYTHON_END, "")
            if not final:  # a partial <|python_end|> at the end is not part of the calls
                text = text[:len(text) - partial_suffix(text, PYTHON_END)]
        return super().parse(text, final)
