"""Tool call parsers longcat, seed_oss, hunyuan_a13b, jamba, minimax, step3, deepseek_v31,
llama4_pythonic (and the qwen3_xml / mimo aliases): whole outputs, and the same outputs
streamed in random chunk sizes and one character at a time, whose deltas must assemble into
the whole answer (each call's name first, then its arguments); malformed outputs fall back to
content without raising."""

from __future__ import annotations

import json

import pytest

from parser_checks import check_tool_output, check_tool_stream, tool_shaper

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                         "zip": {"type": "string"}, "hot": {"type": "boolean"},
                                         "temp": {"type": "number"}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "refresh"}},
]
PARIS = {"city": "Paris", "days": 3}
W = '{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}'
T = '{"name": "get_time", "arguments": {"tz": "東京"}}'


def seed(name: str, params: list[tuple[str, str]]) -> str:
    return ("<seed:tool_call>\n<function=" + name + ">\n"
            + "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params) + "</function>\n</seed:tool_call>")


SB, SE = "<｜tool_calls_begin｜>", "<｜tool_calls_end｜>"


def step(name: str, params: list[tuple[str, str]], kind: str = "function") -> str:
    return (f'<｜tool_call_begin｜>{kind}<｜tool_sep｜><steptml:invoke name="{name}">'
            + "".join(f'<steptml:parameter name="{k}">{v}</steptml:parameter>' for k, v in params)
            + "</steptml:invoke><｜tool_call_end｜>")


DB, DE = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"


def ds(name: str, args: str) -> str:
    return f"<｜tool▁call▁begin｜>{name}<｜tool▁sep｜>{args}<｜tool▁call▁end｜>"


# (parser, output, expected content, expected [(name, arguments)])
CASES = [
    # longcat (Hermes with <longcat_tool_call>)
    ("longcat", "No tools.", "No tools.", []),
    ("longcat", "<longcat_tool_call>" + W + "</longcat_tool_call>", None, [("get_weather", PARIS)]),
    ("longcat", "Sure.\n<longcat_tool_call>\n" + W + "\n</longcat_tool_call>\n<longcat_tool_call>\n" + T
     + "\n</longcat_tool_call>", "Sure.\n", [("get_weather", PARIS), ("get_time", {"tz": "東京"})]),
    # seed_oss (Qwen3-Coder's XML in <seed:tool_call>)
    ("seed_oss", "Plain.", "Plain.", []),
    ("seed_oss", seed("get_weather", [("city", "Paris"), ("days", "3")]), None, [("get_weather", PARIS)]),
    ("seed_oss", "Let me look.\n" + seed("get_weather", [("city", "Paris"), ("days", "3"), ("hot", "True")])
     + seed("get_time", [("tz", "UTC")]), "Let me look.\n",
     [("get_weather", {"city": "Paris", "days": 3, "hot": True}), ("get_time", {"tz": "UTC"})]),
    # thinking left in the output: it stays content, a call written inside it is not one
    ("seed_oss", "<seed:think>maybe <function=x> no</seed:think>Ok." + seed("refresh", []),
     "<seed:think>maybe <function=x> no</seed:think>Ok.", [("refresh", {})]),
    ("seed_oss", "<seed:think>just thinking</seed:think>Answer.", "<seed:think>just thinking</seed:think>Answer.", []),
    ("seed_oss", "<seed:tool_call><function=get_weather", "<seed:tool_call><function=get_weather", []),
    # hunyuan_a13b
    ("hunyuan_a13b", "Hello.", "Hello.", []),
    ("hunyuan_a13b", "<tool_calls>[" + W + "]</tool_calls>", None, [("get_weather", PARIS)]),
    ("hunyuan_a13b", "Checking. <tool_calls>[" + W + ", " + T + "]</tool_calls> done", "Checking.  done",
     [("get_weather", PARIS), ("get_time", {"tz": "東京"})]),
    ("hunyuan_a13b", "<think>hmm</think>\n<tool_calls>[" + W + "]</tool_calls>", "<think>hmm</think>",
     [("get_weather", PARIS)]),
    ("hunyuan_a13b", "<tool_calls>[{\"name\": \"get_time\", \"arguments\": \"{\\\"tz\\\": \\\"UTC\\\"}\"}]</tool_calls>",
     None, [("get_time", {"tz": "UTC"})]),  # arguments as a JSON string
    ("hunyuan_a13b", "x <tool_calls>not json</tool_calls>", "x <tool_calls>not json</tool_calls>", []),
    # jamba
    ("jamba", "Just text.", "Just text.", []),
    ("jamba", "<tool_calls>[" + W + "]</tool_calls>", None, [("get_weather", PARIS)]),
    ("jamba", "I'll check.<tool_calls>[" + W + ",\n " + T + "]</tool_calls>after", "I'll check.",
     [("get_weather", PARIS), ("get_time", {"tz": "東京"})]),
    ("jamba", " <tool_calls>[{\"name\": \"refresh\", \"arguments\": {}}]</tool_calls>", None, [("refresh", {})]),
    ("jamba", "<tool_calls>oops</tool_calls>", "<tool_calls>oops</tool_calls>", []),
    # minimax (MiniMax-M1: JSON lines)
    ("minimax", "Nothing to call.", "Nothing to call.", []),
    ("minimax", "<tool_calls>\n" + W + "\n</tool_calls>", None, [("get_weather", PARIS)]),
    ("minimax", "Two calls.\n\n<tool_calls>\n" + W + "\n" + T + "\n</tool_calls>", "Two calls.",
     [("get_weather", PARIS), ("get_time", {"tz": "東京"})]),
    ("minimax", "<think>try <tool_calls>\n" + T + "\n</tool_calls></think>Now.<tool_calls>\n" + W + "\n</tool_calls>",
     "<think>try <tool_calls>\n" + T + "\n</tool_calls></think>Now.", [("get_weather", PARIS)]),
    ("minimax", "<tool_calls>\nnot json\n" + W + "\n</tool_calls>", None, [("get_weather", PARIS)]),
    ("minimax", "<tool_calls>\n" + W, None, [("get_weather", PARIS)]),  # cut off: the lines so far
    # step3
    ("step3", "Plain words.", "Plain words.", []),
    ("step3", SB + step("get_weather", [("city", " Paris "), ("days", "3")]) + SE, None, [("get_weather", PARIS)]),
    ("step3", "Let me see. " + SB + step("get_weather", [("city", "Paris"), ("days", "x"), ("hot", "false"),
                                                         ("temp", "21.5")]) + "\n" + step("refresh", []) + SE + " ok\n",
     "Let me see.  ok", [("get_weather", {"city": "Paris", "days": "x", "hot": False, "temp": 21.5}),
                         ("refresh", {})]),
    ("step3", SB + step("get_time", [("n", "5")]), None, [("get_time", {"n": "5"})]),  # no schema type: text
    ("step3", SB + step("get_time", [], kind="code") + SE, SB + step("get_time", [], kind="code") + SE, []),
    ("step3", "a" + SB + "<｜tool_call_begin｜>function<｜tool_sep｜>broken" + SE,
     "a" + SB + "<｜tool_call_begin｜>function<｜tool_sep｜>broken" + SE, []),
    # deepseek_v31
    ("deepseek_v31", "Hi there.", "Hi there.", []),
    ("deepseek_v31", DB + ds("get_weather", '{"city": "Paris", "days": 3}') + DE, None, [("get_weather", PARIS)]),
    ("deepseek_v31", "Sure!" + DB + ds("get_weather", '{"city": "Paris", "days": 3}') + ds("get_time", '{"tz": "東京"}')
     + DE + "dropped", "Sure!", [("get_weather", PARIS), ("get_time", {"tz": "東京"})]),
    ("deepseek_v31", "Hm" + DB + "<｜tool▁call▁begin｜>get_time\n<｜tool▁sep｜>{}<｜tool▁call▁end｜>" + DE, "Hm", []),
    # llama4_pythonic
    ("llama4_pythonic", "Hello!", "Hello!", []),
    ("llama4_pythonic", '[get_weather(city="Paris", days=3)]', None, [("get_weather", PARIS)]),
    ("llama4_pythonic", '<|python_start|>[get_weather(city="Paris", days=3), refresh()]<|python_end|>', None,
     [("get_weather", PARIS), ("refresh", {})]),
    ("llama4_pythonic", "<|python_start|>just text<|python_end|>", "just text", []),
    # aliases
    ("qwen3_xml", "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
     "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>", None, [("get_weather", PARIS)]),
    ("mimo", "<tool_call>\n<function=refresh>\n</function>\n</tool_call>", None, [("refresh", {})]),
]
# Whole outputs only: a stream has sent the call's name before what spoils it came.
WHOLE_ONLY = [
    ("jamba", "<tool_calls>[{\"name\": \"refresh\"}]</tool_calls>", "<tool_calls>[{\"name\": \"refresh\"}]</tool_calls>",
     []),
    ("hunyuan_a13b", "<tool_calls>[" + W + ", {\"bad\": 1]</tool_calls>",
     "<tool_calls>[" + W + ", {\"bad\": 1]</tool_calls>", []),
    ("longcat", "<longcat_tool_call>{\"name\": \"refresh\", \"arguments\": {</longcat_tool_call>",
     "<longcat_tool_call>{\"name\": \"refresh\", \"arguments\": {</longcat_tool_call>", []),
    ("jamba", "<tool_calls>[" + W + "]", "<tool_calls>[" + W + "]", []),  # no </tool_calls>
    ("hunyuan_a13b", "<tool_calls>[" + W + "]", "<tool_calls>[" + W + "]", []),
    ("hunyuan_a13b", "<tool_calls>[{\"name\": \"refresh\"}, " + W + "]</tool_calls>", None,
     [("get_weather", PARIS)]),  # an element without arguments is skipped
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


@pytest.mark.parametrize("parser", ["longcat", "seed_oss", "hunyuan_a13b", "jamba", "minimax", "step3",
                                    "deepseek_v31", "llama4_pythonic"])
@pytest.mark.parametrize("text", ["", "<", "<tool_calls>", "<tool_calls>[{", "<｜tool_calls_begin｜><｜tool_call_begin｜>",
                                  "<|python_start|>[f(", "<seed:tool_call><function=", "]]}}{{\"name\": 1}",
                                  "<tool_calls>\n{\"name\": 5, \"arguments\": {}}\n</tool_calls>",
                                  "<tool_calls>[{\"name\": 5, \"arguments\": {}}]</tool_calls>"])
def test_malformed_or_cut_off_never_raises(parser: str, text: str) -> None:
    """No calls (the content is the format's: all of it, or the text before a block)."""
    message = tool_shaper(parser, TOOLS).message(text)
    assert message["tool_calls"] == [] and isinstance(message["content"], str)
    s = tool_shaper(parser, TOOLS)
    for i, ch in enumerate(text):
        s.feed(ch, i == len(text) - 1)


def test_jamba_streams_arguments_as_they_grow() -> None:
    s = tool_shaper("jamba", TOOLS)
    assert s.delta("Hi<tool_calls>[{\"name\": \"get_wea", False) == {"content": "Hi"}
    first = s.delta("Hi<tool_calls>[{\"name\": \"get_weather\", \"arguments\": {\"ci", False)["tool_calls"][0]
    assert first["function"] == {"name": "get_weather", "arguments": '{"ci'}


def test_step3_sends_arguments_when_the_call_closes() -> None:
    s = tool_shaper("step3", TOOLS)
    head = SB + '<｜tool_call_begin｜>function<｜tool_sep｜><steptml:invoke name="get_weather">'
    assert s.delta(head, False)["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    assert s.delta(head + '<steptml:parameter name="days">2</steptml:parameter>', False) == {}
    done = s.delta(head + '<steptml:parameter name="days">2</steptml:parameter></steptml:invoke><｜tool_call_end｜>',
                   False)
    assert done["tool_calls"][0]["function"] == {"arguments": '{"days": 2}'}


def test_new_parsers_are_flag_choices_and_keep_special_tokens() -> None:
    from pagedlm.entrypoints.openai.tool_parsers import TOOL_PARSERS

    for name in ("longcat", "seed_oss", "hunyuan_a13b", "jamba", "minimax", "step3", "deepseek_v31"):
        assert TOOL_PARSERS[name].keep_special_tokens
    assert TOOL_PARSERS["qwen3_xml"] is TOOL_PARSERS["qwen3_coder"] is TOOL_PARSERS["mimo"]
