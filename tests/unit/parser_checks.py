"""Shared checks of the tool-call and reasoning parsers' tests (test_tool_parsers_*.py,
test_reasoning_parsers_*.py): a parser's answer to a whole output, and the deltas it streams
when the same output arrives in random chunk sizes, which must assemble into that answer."""

from __future__ import annotations

import json
import random
from typing import Any

from pagedlm.entrypoints.openai.tool_calling import ChoiceShaper, ServingOptions, ToolPlan, plan_tools


def random_chunks(text: str, seed: int, most: int = 9) -> list[str]:
    rng, chunks, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, most)
        chunks.append(text[i:i + n])
        i += n
    return chunks


def tool_shaper(parser: str, tools: list[dict[str, Any]]) -> ChoiceShaper:
    options = ServingOptions(True, parser)
    return ChoiceShaper(plan_tools(tools, "auto", None, options), options, "")


def calls_of(message: dict) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]]


def check_tool_output(parser: str, tools: list[dict[str, Any]], text: str, content: str | None, calls: list) -> None:
    message = tool_shaper(parser, tools).message(text)
    assert (message["content"], calls_of(message)) == (content, calls)
    assert tool_shaper(parser, tools).finish_reason("stop", text) == ("tool_calls" if calls else "stop")


def check_tool_stream(parser: str, tools: list[dict[str, Any]], text: str, content: str | None, calls: list,
                      seed: int) -> None:
    """Each call's name comes first and whole, then its arguments; the calls, the content and
    the exact argument text equal the whole answer's."""
    s = tool_shaper(parser, tools)
    chunks = random_chunks(text, seed)
    streamed_content, streamed = "", {}
    for i, chunk in enumerate(chunks):
        delta = s.feed(chunk, i == len(chunks) - 1)
        streamed_content += delta.get("content", "")
        for entry in delta.get("tool_calls", []):
            if entry["index"] not in streamed:
                assert entry["function"]["name"] and entry["id"]
                streamed[entry["index"]] = [entry["function"]["name"], ""]
            else:
                assert "name" not in entry["function"]
            streamed[entry["index"]][1] += entry["function"]["arguments"]
    assert [(n, json.loads(a)) for n, a in streamed.values()] == calls
    assert streamed_content == (content or "")
    whole = tool_shaper(parser, tools).message(text)
    assert [a for _, a in streamed.values()] == [c["function"]["arguments"] for c in whole["tool_calls"]]


def reasoning_shaper(name: str, prompt: str) -> ChoiceShaper:
    return ChoiceShaper(ToolPlan(), ServingOptions(reasoning_parser=name), prompt)


def check_reasoning_output(name: str, prompt: str, text: str, reasoning: str | None, content: str | None) -> None:
    message = reasoning_shaper(name, prompt).message(text)
    assert (message["reasoning_content"], message["content"] or None) == (reasoning, content)


def check_reasoning_stream(name: str, prompt: str, text: str, reasoning: str | None, content: str | None,
                           seed: int) -> None:
    s = reasoning_shaper(name, prompt)
    chunks = random_chunks(text, seed, most=7)
    deltas = [s.feed(chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == (reasoning or "")
    assert "".join(d.get("content", "") for d in deltas) == (content or "")
