"""More tool call parsers (qwen3_coder, ...) on outputs from vLLM's own tests for each parser:
whole, and streamed in random chunk sizes, where the deltas must assemble into the same
content and calls as the whole answer (and each call's name must come before its arguments)."""

from __future__ import annotations

import pytest

from parser_checks import calls_of, check_tool_output, check_tool_stream, tool_shaper

from pagedlm.entrypoints.openai.tool_calling import ChoiceShaper, ServingOptions, ToolPlan

WEATHER = {"name": "get_current_weather", "parameters": {
    "type": "object", "required": ["city", "state"],
    "properties": {"city": {"type": "string"}, "state": {"type": "string"},
                   "unit": {"type": "string", "enum": ["fahrenheit", "celsius"]}}}}
AREA = {"name": "calculate_area", "parameters": {
    "type": "object", "properties": {"shape": {"type": "string"}, "dimensions": {"type": "object"},
                                     "precision": {"type": "integer"}}}}
TYPES = {"name": "test_types", "parameters": {"type": "object", "properties": {
    "int_param": {"type": "integer"}, "float_param": {"type": "float"}, "num_param": {"type": "number"},
    "bool_param": {"type": "boolean"}, "str_param": {"type": "string"}, "obj_param": {"type": "object"},
    "arr_param": {"type": "array"}, "bad_int": {"type": "integer"}, "tuple_ish": {"type": "something"}}}}
TOOLS = [{"type": "function", "function": f} for f in (WEATHER, AREA, TYPES)]

DALLAS = {"city": "Dallas", "state": "TX", "unit": "fahrenheit"}
QWEN3_CODER_DALLAS = ("<tool_call>\n<function=get_current_weather>\n<parameter=city>\nDallas\n</parameter>\n"
                      "<parameter=state>\nTX\n</parameter>\n<parameter=unit>\nfahrenheit\n</parameter>\n"
                      "</function>\n</tool_call>")

DS_BEGIN, DS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL = "<｜tool▁call▁begin｜>function<｜tool▁sep｜>{}\n```json\n{}\n```<｜tool▁call▁end｜>"

# (parser, output, expected content, expected [(name, arguments)])
CASES = [
    ("qwen3_coder", "This is a test response without any tool calls",
     "This is a test response without any tool calls", []),
    ("qwen3_coder", QWEN3_CODER_DALLAS, None, [("get_current_weather", DALLAS)]),
    ("qwen3_coder", "Sure! Let me check the weather for you." + QWEN3_CODER_DALLAS,
     "Sure! Let me check the weather for you.", [("get_current_weather", DALLAS)]),
    ("qwen3_coder", '<tool_call>\n<function=calculate_area>\n<parameter=shape>\nrectangle\n</parameter>\n'
                    '<parameter=dimensions>\n{"width": 10, \n "height": 20}\n</parameter>\n<parameter=precision>\n'
                    '2\n</parameter>\n</function>\n</tool_call>', None,
     [("calculate_area", {"shape": "rectangle", "dimensions": {"width": 10, "height": 20}, "precision": 2})]),
    ("qwen3_coder", QWEN3_CODER_DALLAS + "\n" + QWEN3_CODER_DALLAS.replace("Dallas", "Orlando").replace("TX", "FL"),
     None, [("get_current_weather", DALLAS),
            ("get_current_weather", {"city": "Orlando", "state": "FL", "unit": "fahrenheit"})]),
    ("qwen3_coder", "Let me calculate that area for you.<tool_call>\n<function=calculate_area>\n<parameter=shape>\n"
                    'circle\n</parameter>\n<parameter=dimensions>\n{"radius": 15.5}\n</parameter>\n'
                    "<parameter=precision>\n3\n</parameter>\n</function>\n</tool_call>",
     "Let me calculate that area for you.",
     [("calculate_area", {"shape": "circle", "dimensions": {"radius": 15.5}, "precision": 3})]),
    # no <tool_call> tags: the bare functions are the calls
    ("qwen3_coder", "<function=get_current_weather>\n<parameter=city>\nDallas\n</parameter>\n<parameter=state>\nTX\n"
                    "</parameter>\n</function>", None, [("get_current_weather", {"city": "Dallas", "state": "TX"})]),
    # types by the schema; unknown parameters and failed conversions stay strings; null is null
    ("qwen3_coder", "<tool_call>\n<function=test_types>\n<parameter=int_param>\n42\n</parameter>\n"
                    "<parameter=float_param>\n3.14\n</parameter>\n<parameter=num_param>\n5.0\n</parameter>\n"
                    "<parameter=bool_param>\nTrue\n</parameter>\n<parameter=str_param>\nhello world\n</parameter>\n"
                    '<parameter=obj_param>\n{"key": "value"}\n</parameter>\n<parameter=arr_param>\n[1, \'a\']\n'
                    "</parameter>\n<parameter=bad_int>\nforty\n</parameter>\n<parameter=tuple_ish>\n(1, 2)\n"
                    "</parameter>\n<parameter=extra>\n7\n</parameter>\n<parameter=str_param2>\nnull\n</parameter>\n"
                    "</function>\n</tool_call>", None,
     [("test_types", {"int_param": 42, "float_param": 3.14, "num_param": 5, "bool_param": True,
                      "str_param": "hello world", "obj_param": {"key": "value"}, "arr_param": [1, "a"],
                      "bad_int": "forty", "tuple_ish": [1, 2], "extra": "7", "str_param2": None})]),
    # closing tags left out: the next tag or the end closes a parameter / function / call
    ("qwen3_coder", "<tool_call>\n<function=calculate_area>\n<parameter=shape>\nsquare\n<parameter=precision>\n1\n"
                    "</function>\n</tool_call>\n<tool_call>\n<function=get_current_weather>\n<parameter=city>\nRome",
     None, [("calculate_area", {"shape": "square", "precision": 1}), ("get_current_weather", {"city": "Rome"})]),
    ("qwen3_coder", "<tool_call>\n<function=get_current_weather>\n</function>\n</tool_call>", None,
     [("get_current_weather", {})]),
    # a marker without a call, or a call without '>' after its name: all text
    ("qwen3_coder", "Use <tool_call> like this.", "Use <tool_call> like this.", []),
    ("qwen3_coder", "<tool_call>\n<function=broken", "<tool_call>\n<function=broken", []),
    # deepseek_v3 (vLLM's tests/entrypoints/openai/tool_parsers/test_deepseekv3_tool_parser.py)
    ("deepseek_v3", "How can I help you today? I can check weather for you.",
     "How can I help you today? I can check weather for you.", []),
    ("deepseek_v3", DS_BEGIN + DS_CALL.format("get_weather", '{"city": "Tokyo", "unit": "celsius"}') + DS_END, None,
     [("get_weather", {"city": "Tokyo", "unit": "celsius"})]),
    ("deepseek_v3", "Let me check the weather for you." + DS_BEGIN + DS_CALL.format("get_weather", '{"city": "Paris"}')
     + "\n" + DS_CALL.format("search_hotels", '{"location": "Tokyo", "check_in": "2025-01-15"}') + DS_END
     + "<｜end▁of▁sentence｜>", "Let me check the weather for you.",
     [("get_weather", {"city": "Paris"}), ("search_hotels", {"location": "Tokyo", "check_in": "2025-01-15"})]),
    ("deepseek_v3", DS_BEGIN + DS_CALL.format("send_message", r'{"text": "He said \"hello\"", "path": "C:\\Users", '
                                              r'"newline": "line1\nline2", "empty": {}}') + DS_END, None,
     [("send_message", {"text": 'He said "hello"', "path": "C:\\Users", "newline": "line1\nline2", "empty": {}})]),
    ("deepseek_v3", DS_BEGIN + DS_CALL.format("get_current_time", "{}") + DS_END, None, [("get_current_time", {})]),
    # a marker without a complete call: the text before it, no calls (as vLLM's)
    ("deepseek_v3", "Hi" + DS_BEGIN + 'function<｜tool▁sep｜>get_weather\n```json\n{"city": "Tokyo"}\n```<｜tool▁calls▁end｜>',
     "Hi", []),
    # granite (vLLM's tests/entrypoints/openai/tool_parsers/test_granite_tool_parser.py)
    ("granite", "This is a regular response without any tool calls.",
     "This is a regular response without any tool calls.", []),
    ("granite", '<|tool_call|> [{"name": "get_weather", "arguments": {"city": "Tokyo"}}]', None,
     [("get_weather", {"city": "Tokyo"})]),
    ("granite", '<|tool_call|> [\n  {"name": "get_weather", "arguments": {"city": "Tokyo"}},\n  '
                '{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}\n]', None,
     [("get_weather", {"city": "Tokyo"}), ("get_time", {"timezone": "Asia/Tokyo"})]),
    ("granite", '<tool_call> [{\n  "name": "test_function",\n  "arguments": {\n    "quoted": "He said \\"hello\\"",\n'
                '    "unicode": "emoji: 🎉", "null_field": null, "empty_object": {}\n  }\n}]', None,
     [("test_function", {"quoted": 'He said "hello"', "unicode": "emoji: 🎉", "null_field": None, "empty_object": {}})]),
    ("granite", '  [{"name": "refresh", "arguments": {}}]\n', None, [("refresh", {})]),
    ("granite", 'Let me check the weather for you.\n<|tool_call|> [{"name": "get_weather", "arguments": {"city": "Tokyo"}}]'
                "\nI'll get that information.", 'Let me check the weather for you.\n<|tool_call|> [{"name": '
     '"get_weather", "arguments": {"city": "Tokyo"}}]\nI\'ll get that information.', []),
    ("granite", '<|tool_call|> [{"name": "func", "arguments": {', '<|tool_call|> [{"name": "func", "arguments": {', []),
    ("granite", '<|tool_call|> {"name": "func", "arguments": {}}', '<|tool_call|> {"name": "func", "arguments": {}}', []),
    ("granite", '[{"name": "func"}]', '[{"name": "func"}]', []),  # no arguments: not a call
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


def test_qwen3_coder_streams_each_parameter_as_it_closes() -> None:
    s = shaper("qwen3_coder")
    assert s.delta("Hi <tool_", False) == {"content": "Hi "}
    assert s.delta("Hi <tool_call>\n<function=get_current_weat", False) == {}
    first = s.delta("Hi <tool_call>\n<function=get_current_weather>\n<parameter=city>\nDal", False)
    assert first["tool_calls"][0]["function"] == {"name": "get_current_weather", "arguments": "{"}
    more = s.delta("Hi <tool_call>\n<function=get_current_weather>\n<parameter=city>\nDallas\n</parameter>", False)
    assert more["tool_calls"][0]["function"] == {"arguments": '"city": "Dallas"'}


def test_qwen3_coder_without_tools_keeps_strings() -> None:
    options = ServingOptions(True, "qwen3_coder")
    s = ChoiceShaper(ToolPlan("auto"), options, "")
    message = s.message("<tool_call>\n<function=f>\n<parameter=n>\n42\n</parameter>\n</function>\n</tool_call>")
    assert calls_of(message) == [("f", {"n": "42"})]


def test_deepseek_v3_arguments_are_taken_as_written() -> None:
    # vLLM's takes the fenced line as the arguments without checking it is JSON
    text = DS_BEGIN + DS_CALL.format("get_weather", '{"city": "Tokyo"') + DS_END
    message = shaper("deepseek_v3").message(text)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
        ("get_weather", '{"city": "Tokyo"')]
    s = shaper("deepseek_v3")
    assert s.delta("Hi<｜tool▁calls", False) == {"content": "Hi"}
    assert s.delta("Hi" + DS_BEGIN + "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_wea", False) == {}
    first = s.delta("Hi" + DS_BEGIN + "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```js", False)
    assert first["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    more = s.delta("Hi" + DS_BEGIN + "<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"a\": 1}\n``", False)
    assert more["tool_calls"][0]["function"] == {"arguments": '{"a": 1}'}


def test_granite_arguments_are_reserialized_as_vllm_does() -> None:
    # json.dumps of the parsed arguments: ASCII escapes, default separators, whatever was written
    message = shaper("granite").message('<tool_call>[{"name": "f", "arguments": {"city":"Zürich","n":[1,2]}}]')
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city": "Z\\u00fcrich", "n": [1, 2]}'
    s = shaper("granite")
    assert s.delta(" <|tool", False) == {}
    assert s.delta(' <|tool_call|> [{"name": "f", "arguments": {"a": 1', False) == {}  # sent once closed
    first = s.delta(' <|tool_call|> [{"name": "f", "arguments": {"a": 1}},', False)["tool_calls"][0]
    assert first["function"] == {"name": "f", "arguments": '{"a": 1}'}
