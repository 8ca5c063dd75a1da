"""Tool call parsers internlm, kimi_k2 and glm45: whole outputs, and the same outputs streamed
in random chunk sizes and split at every character, whose deltas must assemble into the whole
answer (each call's name first, then its arguments); malformed outputs fall back to content."""

from __future__ import annotations

import json

import pytest

from parser_checks import check_tool_output, check_tool_stream, tool_shaper

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                         "zip": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "refresh"}},
]
PARIS = {"city": "Paris", "days": 3}

IL = "<|action_start|><|plugin|>\n"
KB, KE = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"


def kimi(name: str, index: int, args: str) -> str:
    return f"<|tool_call_begin|>functions.{name}:{index}<|tool_call_argument_begin|>{args}<|tool_call_end|>"


def glm(name: str, pairs: list[tuple[str, str]]) -> str:
    return (f"<tool_call>{name}\n" + "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>\n"
                                            for k, v in pairs) + "</tool_call>")


# (parser, output, expected content, expected [(name, arguments)])
CASES = [
    # internlm (InternLM2's chat template: <|action_start|><|plugin|>\n{json}<|action_end|>)
    ("internlm", "Just text.", "Just text.", []),
    ("internlm", IL + '{"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}<|action_end|>', None,
     [("get_weather", PARIS)]),
    ("internlm", "Let me check." + IL + '{"name": "get_time", "arguments": {"tz": "東京"}}<|action_end|>',
     "Let me check.", [("get_time", {"tz": "東京"})]),
    ("internlm", IL + '{"name": "refresh"}<|action_end|>', None, [("refresh", {})]),
    ("internlm", IL + '{"name": "refresh", "parameters": {}}', None, [("refresh", {})]),  # no end marker
    ("internlm", IL + '{"name": "refresh", "parameters": {}}<|action_end|>trailing', None, [("refresh", {})]),
    # malformed: all content
    ("internlm", "a" + IL + '{"name": "refresh", "parameters": {<|action_end|>',
     "a" + IL + '{"name": "refresh", "parameters": {<|action_end|>', []),
    ("internlm", IL + '{"parameters": {}}<|action_end|>', IL + '{"parameters": {}}<|action_end|>', []),
    ("internlm", IL + "no json<|action_end|>", IL + "no json<|action_end|>", []),
    ("internlm", "<|action_start|><|interpreter|>print(1)<|action_end|>",
     "<|action_start|><|interpreter|>print(1)<|action_end|>", []),
    # kimi_k2
    ("kimi_k2", "No tools here.", "No tools here.", []),
    ("kimi_k2", KB + kimi("get_weather", 0, '{"city": "Paris", "days": 3}') + KE, None, [("get_weather", PARIS)]),
    ("kimi_k2", "I'll check.\n" + KB + kimi("get_weather", 0, '{"city": "Paris", "days": 3}')
     + kimi("get_time", 1, '{"tz": "Europe/Paris"}') + KE + "after is dropped", "I'll check.\n",
     [("get_weather", PARIS), ("get_time", {"tz": "Europe/Paris"})]),
    ("kimi_k2", KB + "<|tool_call_begin|> functions.refresh:0 <|tool_call_argument_begin|> {} \n<|tool_call_end|>"
     + KE, None, [("refresh", {})]),
    ("kimi_k2", KB + "<|tool_call_begin|>get_time:7<|tool_call_argument_begin|>{\"a\": [1, 2]}<|tool_call_end|>" + KE,
     None, [("get_time", {"a": [1, 2]})]),
    # a section without a complete call: the content before it, no calls (as vLLM's)
    ("kimi_k2", "Hi" + KB + "<|tool_call_begin|>bad<|tool_call_argument_begin|>{}<|tool_call_end|>" + KE, "Hi", []),
    # glm45
    ("glm45", "Plain answer.", "Plain answer.", []),
    ("glm45", glm("get_weather", [("city", "Paris"), ("days", "3")]), None, [("get_weather", PARIS)]),
    ("glm45", "Checking.\n" + glm("get_weather", [("city", "Paris"), ("days", "3")]) + "\n"
     + glm("get_time", [("tz", "UTC"), ("opts", '{"a": [1, true, null]}'), ("x", "[1, 'b']"), ("n", "null")]),
     "Checking.\n", [("get_weather", PARIS), ("get_time", {"tz": "UTC", "opts": {"a": [1, True, None]},
                                                            "x": [1, "b"], "n": None})]),
    # string-typed parameters stay text, stripped; zip "02134" stays a string
    ("glm45", "\n" + glm("get_weather", [("city", " 123 "), ("zip", "02134"), ("days", " 2 ")]), None,
     [("get_weather", {"city": "123", "zip": "02134", "days": 2})]),
    ("glm45", glm("refresh", []), None, [("refresh", {})]),
    # malformed: all content
    ("glm45", "<tool_call>get_weather<arg_key>city</arg_key></tool_call>",
     "<tool_call>get_weather<arg_key>city</arg_key></tool_call>", []),
    ("glm45", "x <tool_call>get_weather", "x <tool_call>get_weather", []),
    # cut off: the name and the pairs that closed (as vLLM's stream)
    ("glm45", "x <tool_call>get_weather\n<arg_key>days</arg_key><arg_value>2</arg_value><arg_key>city</arg_key>"
     "<arg_value>Par", "x ", [("get_weather", {"days": 2})]),
]
# Whole outputs only: a stream has sent the call's name before the value that spoils it came.
WHOLE_ONLY = [
    ("glm45", glm("get_time", [("s", "{1, 2}")]), glm("get_time", [("s", "{1, 2}")]), []),  # a set: not JSON
]


@pytest.mark.parametrize("parser,text,content,calls", CASES + WHOLE_ONLY)
def test_whole_output(parser: str, text: str, content: str | None, calls: list) -> None:
    check_tool_output(parser, TOOLS, text, content, calls)


@pytest.mark.parametrize("parser,text,content,calls", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_in_random_chunks(parser: str, text: str, content: str | None, calls: list, seed: int) -> None:
    check_tool_stream(parser, TOOLS, text, content, calls, seed)


@pytest.mark.parametrize("parser,text,content,calls", CASES)
def test_streamed_one_character_at_a_time(parser: str, text: str, content: str | None, calls: list) -> None:
    s = tool_shaper(parser, TOOLS)
    streamed_content, streamed = "", {}
    for i, ch in enumerate(text):
        delta = s.feed(ch, i == len(text) - 1)
        streamed_content += delta.get("content", "")
        for entry in delta.get("tool_calls", []):
            name, args = streamed.get(entry["index"], (entry["function"].get("name"), ""))
            streamed[entry["index"]] = (name, args + entry["function"]["arguments"])
    assert streamed_content == (content or "")
    assert [(n, json.loads(a)) for n, a in streamed.values()] == calls


def test_kimi_k2_ids_are_the_ones_written() -> None:
    text = KB + kimi("get_weather", 0, '{"city": "Paris"}') + kimi("get_time", 1, "{}") + KE
    message = tool_shaper("kimi_k2", TOOLS).message(text)
    assert [c["id"] for c in message["tool_calls"]] == ["functions.get_weather:0", "functions.get_time:1"]
    s = tool_shaper("kimi_k2", TOOLS)
    first = s.delta(KB + "<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"ci", False)
    assert first["tool_calls"][0] == {"index": 0, "id": "functions.get_weather:0", "type": "function",
                                      "function": {"name": "get_weather", "arguments": '{"ci'}}
    assert s.delta(text, True)["tool_calls"][0]["function"] == {"arguments": 'ty": "Paris"}'}


def test_kimi_k2_arguments_are_taken_as_written() -> None:
    message = tool_shaper("kimi_k2", TOOLS).message(KB + kimi("get_time", 0, '{"a":1,  "b":"é"}') + KE)
    assert message["tool_calls"][0]["function"]["arguments"] == '{"a":1,  "b":"é"}'


def test_glm45_streams_each_pair_as_it_closes() -> None:
    s = tool_shaper("glm45", TOOLS)
    assert s.delta("<tool_call>get_weath", False) == {}
    first = s.delta("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Par", False)["tool_calls"][0]
    assert first["function"] == {"name": "get_weather", "arguments": "{"}
    assert s.delta("<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n", False) == {
        "tool_calls": [{"index": 0, "function": {"arguments": '"city": "Paris"'}}]}


def test_glm45_without_tools_reads_values_as_json() -> None:
    message = tool_shaper("glm45", [{"type": "function", "function": {"name": "f"}}]).message(
        glm("f", [("a", "123"), ("b", "Paris"), ("c", "True")]))
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"a": 123, "b": "Paris", "c": True}


def test_internlm_sends_the_call_whole_when_it_ends() -> None:
    s = tool_shaper("internlm", TOOLS)
    assert s.delta("Sure." + IL + '{"name": "refresh", "parameters": {"a": 1}}', False) == {"content": "Sure."}
    done = s.delta("Sure." + IL + '{"name": "refresh", "parameters": {"a": 1}}<|action_end|>', False)
    assert done["tool_calls"][0]["function"] == {"name": "refresh", "arguments": '{"a": 1}'}


def test_new_tool_parsers_are_flag_choices_and_keep_special_tokens() -> None:
    from pagedlm.entrypoints.openai.tool_parsers import TOOL_PARSERS

    for name in ("internlm", "kimi_k2", "glm45"):
        assert TOOL_PARSERS[name].keep_special_tokens
