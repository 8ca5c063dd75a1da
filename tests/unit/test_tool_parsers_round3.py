"""Tool call parsers phi4_mini_json and xlam on outputs from vLLM's tests for each: whole, and
streamed in random chunk sizes, where the deltas must assemble into the same content and calls
as the whole answer (and each call's name must come before its arguments)."""

from __future__ import annotations

import json

import pytest

from parser_checks import check_tool_output, check_tool_stream, tool_shaper

from pagedlm.entrypoints.openai.tool_calling import ChoiceShaper

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("get_weather", "get_time", "get_current_weather", "test_function", "refresh")]
TOKYO = {"city": "Tokyo"}
DALLAS = {"city": "Dallas", "state": "TX", "unit": "fahrenheit"}
ORLANDO = {"city": "Orlando", "state": "FL", "unit": "fahrenheit"}
TYPES = {"string_field": "hello", "int_field": 42, "float_field": 3.14, "bool_field": True, "null_field": None,
         "array_field": ["a", "b", "c"], "object_field": {"nested": "value"}, "empty_array": [], "empty_object": {}}
XL_ONE = '[{"name": "get_current_weather", "arguments": ' + json.dumps(DALLAS) + "}]"

# (parser, output, expected content, expected [(name, arguments)])
CASES = [
    # phi4_mini_json (vLLM's tests/tool_parsers/test_phi4mini_tool_parser.py)
    ("phi4_mini_json", "This is a regular response without any tool calls.",
     "This is a regular response without any tool calls.", []),
    ("phi4_mini_json", 'functools[{"name": "get_weather", "arguments": {"city": "Tokyo"}}]', None,
     [("get_weather", TOKYO)]),
    ("phi4_mini_json", 'functools[\n  {"name": "get_weather", "arguments": {"city": "Tokyo"}},\n  '
                       '{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}\n]', None,
     [("get_weather", TOKYO), ("get_time", {"timezone": "Asia/Tokyo"})]),
    # (vLLM's regex stops at the first ']' and loses this one: its test marks it xfail)
    ("phi4_mini_json", "functools[{\n  \"name\": \"test_function\",\n  \"arguments\": " + json.dumps(TYPES, indent=2)
     + "\n}]", None, [("test_function", TYPES)]),
    ("phi4_mini_json", 'functools[{"name": "refresh", "arguments": {}}]', None, [("refresh", {})]),
    ("phi4_mini_json", 'Let me check the weather for you.\nfunctools[{"name": "get_weather", "arguments": '
                       '{"city": "Tokyo"}}]\nWould you like to know more?', None, [("get_weather", TOKYO)]),
    ("phi4_mini_json", 'functools[{\n  "name": "test_function",\n  "arguments": {\n    "quoted": "He said \\"hello\\"",\n'
                       '    "path": "C:\\\\Users\\\\file.txt",\n    "newline": "line1\\nline2",\n'
                       '    "unicode": "emoji: 🎉"\n  }\n}]', None,
     [("test_function", {"quoted": 'He said "hello"', "path": "C:\\Users\\file.txt", "newline": "line1\nline2",
                         "unicode": "emoji: 🎉"})]),
    ("phi4_mini_json", 'functools[{"name": "get_weather", "parameters": {"city": "Tokyo"}}]', None,
     [("get_weather", TOKYO)]),
    # malformed: all content
    ("phi4_mini_json", 'functools[{"name": "func", "arguments": {', 'functools[{"name": "func", "arguments": {', []),
    ("phi4_mini_json", 'functools{"name": "func"}', 'functools{"name": "func"}', []),
    ("phi4_mini_json", 'functools[{"name": "func"}]', 'functools[{"name": "func"}]', []),
    ("phi4_mini_json", "functools[] This is just text", "functools[] This is just text", []),
    ("phi4_mini_json", "functools[ This is just text ]", "functools[ This is just text ]", []),
    # xlam (vLLM's tests/tool_parsers/test_xlam_tool_parser.py)
    ("xlam", "This is a test", "This is a test", []),
    ("xlam", '[{"name": "get_current_weather", "arguments": ' + json.dumps(DALLAS) + '}, {"name": '
             '"get_current_weather", "arguments": ' + json.dumps(ORLANDO) + "}]", None,
     [("get_current_weather", DALLAS), ("get_current_weather", ORLANDO)]),
    ("xlam", "<think>I'll help you with that.</think>" + XL_ONE, "<think>I'll help you with that.</think>",
     [("get_current_weather", DALLAS)]),
    ("xlam", "I'll help you with that.\n```json\n" + XL_ONE + "\n```", "I'll help you with that.",
     [("get_current_weather", DALLAS)]),
    ("xlam", "```json\n" + XL_ONE + "\n```", None, [("get_current_weather", DALLAS)]),
    ("xlam", "I'll check the weather for you.[TOOL_CALLS]" + XL_ONE, "I'll check the weather for you.",
     [("get_current_weather", DALLAS)]),
    ("xlam", "[TOOL_CALLS]" + XL_ONE, None, [("get_current_weather", DALLAS)]),
    ("xlam", "I'll help you check the weather.<tool_call>" + XL_ONE + "</tool_call>",
     "I'll help you check the weather.", [("get_current_weather", DALLAS)]),
    # string arguments are kept as written; elements that are not calls are skipped
    ("xlam", '[{"name": "refresh", "arguments": "{}"}, {"nome": "x"}]', None, [("refresh", {})]),
    # a list cut short, or not a list: all content
    ("xlam", '[{"name": "refresh", "arguments": {', '[{"name": "refresh", "arguments": {', []),
    ("xlam", '```json\n{"name": "refresh", "arguments": {}}\n```', '```json\n{"name": "refresh", "arguments": {}}\n```',
     []),
]


def shaper(parser: str) -> ChoiceShaper:
    return tool_shaper(parser, TOOLS)


@pytest.mark.parametrize("parser,text,content,calls", CASES)
def test_whole_output(parser: str, text: str, content: str | None, calls: list) -> None:
    check_tool_output(parser, TOOLS, text, content, calls)


@pytest.mark.parametrize("parser,text,content,calls", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_in_random_chunks(parser: str, text: str, content: str | None, calls: list, seed: int) -> None:
    check_tool_stream(parser, TOOLS, text, content, calls, seed)


def test_arguments_are_reserialized_as_vllm_does() -> None:
    # json.dumps(..., ensure_ascii=False): default separators, characters as they are
    message = shaper("phi4_mini_json").message('functools[{"name": "f", "arguments": {"city":"Zürich","n":[1,2]}}]')
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city": "Zürich", "n": [1, 2]}'
    message = shaper("xlam").message('[{"name": "f", "arguments": {"city":"Zürich"}}]')
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city": "Zürich"}'


def test_xlam_streams_a_bare_list_call_by_call() -> None:
    s = shaper("xlam")
    assert s.delta('[{"name": "refresh", "arguments": {"a": 1', False) == {}
    first = s.delta('[{"name": "refresh", "arguments": {"a": 1}}, {"name"', False)["tool_calls"][0]
    assert first["function"] == {"name": "refresh", "arguments": '{"a": 1}'}
    held = shaper("xlam")
    assert held.delta("Hello", False) == {}  # other text is held to the end
    assert held.delta("Hello", True) == {"content": "Hello"}


def test_new_tool_parsers_are_flag_choices() -> None:
    from pagedlm.entrypoints.openai.tool_parsers import TOOL_PARSERS

    assert {"phi4_mini_json", "xlam"} <= set(TOOL_PARSERS)
