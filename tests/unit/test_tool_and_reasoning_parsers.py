"""Tool call and reasoning parsers on recorded model outputs: whole, and streamed in every
possible split (one character at a time), where the deltas must concatenate to the whole
answer and each call's name must come before its argument fragments."""

from __future__ import annotations

import json

import pytest

from pagedlm.entrypoints.openai.tool_calling import ChoiceShaper, ServingOptions, ToolPlan

# (parser, recorded output, expected content, expected [(name, arguments dict)])
RECORDED = [
    ("hermes", 'I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
               '</tool_call>\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": [2, {"c": "}"}]}}\n</tool_call>',
     "I will check.\n", [("get_weather", {"city": "Paris", "unit": "c"}), ("add", {"a": 1, "b": [2, {"c": "}"}]})]),
    ("hermes", "<tool_call>\n{\"name\": \"ping\", \"arguments\": {}}\n</tool_call>", None, [("ping", {})]),
    ("hermes", "Just text, no calls.", "Just text, no calls.", []),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"x": 1</tool_call>',  # broken JSON: all text
     '<tool_call>\n{"name": "f", "arguments": {"x": 1</tool_call>', []),
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}; '
                    '{"name": "add", "parameters": {"a": 2}}',
     None, [("get_weather", {"city": "Rome"}), ("add", {"a": 2})]),
    ("llama3_json", '{"name": "search", "parameters": {"q": "a \\"quoted\\" word"}}', None,
     [("search", {"q": 'a "quoted" word'})]),
    ("llama3_json", "The answer is 4.", "The answer is 4.", []),
    ("mistral", 'Sure.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}}, '
                '{"name": "add", "arguments": {"a": 3}}]',
     "Sure.", [("get_weather", {"city": "Oslo"}), ("add", {"a": 3})]),
    ("mistral", "No tools needed.", "No tools needed.", []),
    ("pythonic", '[get_weather(city="Paris", days=3), add(a=1, b=[2, 3], c={"k": "v"})]', None,
     [("get_weather", {"city": "Paris", "days": 3}), ("add", {"a": 1, "b": [2, 3], "c": {"k": "v"}})]),
    ("pythonic", "[ping()]", None, [("ping", {})]),
    ("pythonic", "Hello there", "Hello there", []),
    # vLLM's own test outputs (tests/entrypoints/openai/tool_parsers, tests/tool_use):
    # llama3_json: calls after / before text (the text is dropped), "arguments" for "parameters"
    ("llama3_json", 'Here is the result: {"name": "getOpenIncidentsTool", "parameters": {}} Would you like to know more?',
     None, [("getOpenIncidentsTool", {})]),
    ("llama3_json", 'Here are the results: {"name": "searchTool", "parameters": {"query": "test1"}}; '
                    '{"name": "getOpenIncidentsTool", "parameters": {}}; '
                    '{"name": "searchTool", "parameters": {"query": "test2"}} Would you like to know more?',
     None, [("searchTool", {"query": "test1"}), ("getOpenIncidentsTool", {}), ("searchTool", {"query": "test2"})]),
    ("llama3_json", '{"name": "searchTool", "parameters": {"query": "test1"}} ; '
                    '{"name": "getOpenIncidentsTool", "parameters": {}} ; {"name": "searchTool", "arguments": {"q": 2}}',
     None, [("searchTool", {"query": "test1"}), ("getOpenIncidentsTool", {}), ("searchTool", {"q": 2})]),
    ("llama3_json", '{"name": "invalidTool", "parameters": {invalid json}',
     '{"name": "invalidTool", "parameters": {invalid json}', []),
    ("llama3_json", "Use {braces} like this.", "Use {braces} like this.", []),
    # mistral, tokenizers before v11: spaces around the array and keys, arguments before the name
    ("mistral", '[TOOL_CALLS]  [ {"name":"add" , "arguments" : {"a": 3, "b": 4} } ]', None, [("add", {"a": 3, "b": 4})]),
    ("mistral", '[TOOL_CALLS] [{"arguments":{"name": "John Doe"}, "name": "get_age"}]', None,
     [("get_age", {"name": "John Doe"})]),
    # mistral, v11+ tokenizers: [TOOL_CALLS]name{args} and [TOOL_CALLS]name[ARGS]{args}
    ("mistral", '[TOOL_CALLS]add_this_and_that{"a": 3.5, "b": 4}', None, [("add_this_and_that", {"a": 3.5, "b": 4})]),
    ("mistral", '[TOOL_CALLS]add{"a": 3.5, "b": 4}[TOOL_CALLS]multiply{"a": 3, "b": 6}', None,
     [("add", {"a": 3.5, "b": 4}), ("multiply", {"a": 3, "b": 6})]),
    ("mistral", '[TOOL_CALLS]add[ARGS]{"a": 3.5, "b": 4}[TOOL_CALLS]multiply[ARGS]{"a": 3, "b": 6}', None,
     [("add", {"a": 3.5, "b": 4}), ("multiply", {"a": 3, "b": 6})]),
    ("mistral", 'hi[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}', "hi", [("add", {"a": 1, "b": 2})]),
    ("mistral", 'hi{hi[TOOL_CALLS]bash{"command": "print(\\"hello world!\\")\\nre.compile(r\'{}\')"}', "hi{hi",
     [("bash", {"command": "print(\"hello world!\")\nre.compile(r'{}')"})]),
    ("mistral", "[TOOL_CALLS]toolname_no_args", None, [("toolname_no_args", {})]),
    ("mistral", '[TOOL_CALLS]add{"a": 1', '[TOOL_CALLS]add{"a": 1', []),  # cut short: all text
    # pythonic: Python literals (None, True, quotes, escapes) -> JSON
    ("pythonic", "[register_user(name='John Doe', age=37, address={'city': 'San Francisco', 'state': 'CA'}, "
                 "role=None, passed_test=True, aliases=['John', 'Johnny'])]", None,
     [("register_user", {"name": "John Doe", "age": 37, "address": {"city": "San Francisco", "state": "CA"},
                         "role": None, "passed_test": True, "aliases": ["John", "Johnny"]})]),
    ("pythonic", r"[get_weather(city='Martha\'s Vineyard', metric='\"cool units\"')]", None,
     [("get_weather", {"city": "Martha's Vineyard", "metric": '"cool units"'})]),
    ("pythonic", "[get_weather(), do_something_cool(additional_data={}), do_something_cool(steps=[])]", None,
     [("get_weather", {}), ("do_something_cool", {"additional_data": {}}), ("do_something_cool", {"steps": []})]),
    # hermes: a reply without a reasoning parser keeps </think> in the content; text after the call is dropped
    ("hermes", '首先。\n</think>\n\n<tool_call>\n{"name": "internet_search", "arguments": {"question": "5MW燃气轮机 支点布局"}}'
               '\n</tool_call>\n\n ', "首先。\n</think>\n\n", [("internet_search", {"question": "5MW燃气轮机 支点布局"})]),
    ("hermes", '<tool_call>\n{"name": "a", "arguments": {"x": 1}}', None, [("a", {"x": 1})]),  # unclosed, as vLLM
]


def is_call_id(parser: str, call_id: str) -> bool:
    if parser == "mistral":  # what Mistral's templates accept back: 9 letters and digits
        return len(call_id) == 9 and call_id.isalnum()
    return call_id.startswith("call_")


def shaper(parser: str, reasoning: str | None = None, prompt: str = "") -> ChoiceShaper:
    return ChoiceShaper(ToolPlan("auto"), ServingOptions(True, parser, reasoning), prompt)


@pytest.mark.parametrize("parser,text,content,calls", RECORDED)
def test_parser_whole_output(parser: str, text: str, content: str | None, calls: list) -> None:
    message = shaper(parser).message(text)
    assert message["content"] == content
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]]
    assert got == calls
    assert len({c["id"] for c in message["tool_calls"]}) == len(calls)
    assert all(is_call_id(parser, c["id"]) for c in message["tool_calls"])
    expected_reason = "tool_calls" if calls else "stop"
    assert shaper(parser).finish_reason("stop", text) == expected_reason


def stream(s: ChoiceShaper, text: str, step: int = 1) -> list[dict]:
    deltas = []
    for end in list(range(step, len(text), step)) + [len(text)]:
        d = s.delta(text[:end], end == len(text))
        if d:
            deltas.append(d)
    return deltas


@pytest.mark.parametrize("parser,text,content,calls", [r for r in RECORDED if r[3]])
@pytest.mark.parametrize("step", [1, 7])
def test_parser_streamed_fragments_concatenate(parser: str, text: str, content: str | None, calls: list,
                                               step: int) -> None:
    s = shaper(parser)
    streamed: dict[int, dict] = {}
    streamed_content = ""
    for delta in stream(s, text, step):
        streamed_content += delta.get("content", "")
        for entry in delta.get("tool_calls", []):
            if entry["index"] not in streamed:
                assert is_call_id(parser, entry["id"]) and entry["function"]["name"]  # name first
                streamed[entry["index"]] = {"name": entry["function"]["name"], "arguments": ""}
            else:
                assert "name" not in entry["function"]
            streamed[entry["index"]]["arguments"] += entry["function"]["arguments"]
    assert [(c["name"], json.loads(c["arguments"])) for c in streamed.values()] == calls
    if parser == "llama3_json" and text[0] not in "{<":
        # Calls after text (found at the end, as vLLM's): the text before them was streamed
        # as content by then; the message, as vLLM's, drops it.
        assert streamed_content == text[:text.index('{"name"')] and content is None
    else:
        assert streamed_content == (content or "")
    whole = s.message(text)  # same ids and argument text as the stream
    assert [(c["id"] is not None, c["function"]["arguments"]) for c in whole["tool_calls"]] == [
        (True, c["arguments"]) for c in streamed.values()]


def test_partial_marker_is_held_back_while_streaming() -> None:
    s = shaper("hermes")
    assert s.delta("Hi <tool_", False) == {"content": "Hi "}
    assert s.delta("Hi <tool_call>\n{\"na", False) == {}
    assert s.delta('Hi <tool_call>\n{"name": "f"', False)["tool_calls"][0]["function"] == {"name": "f", "arguments": ""}


@pytest.mark.parametrize("name,prompt,text,reasoning,content", [
    ("deepseek_r1", "<think>\n", "Let me think.\n</think>\n\nThe answer.", "Let me think.\n", "\n\nThe answer."),
    ("deepseek_r1", "", "<think>Hmm</think>Yes", "Hmm", "Yes"),
    ("deepseek_r1", "", "Still thinking when cut off", "Still thinking when cut off", None),
    ("qwen3", "", "<think>Plan it.</think>\n\nDone.", "Plan it.", "\n\nDone."),
    ("qwen3", "", "No reasoning at all.", None, "No reasoning at all."),
    ("qwen3", "<think>\n\n</think>\n\n", "Thinking disabled.", None, "Thinking disabled."),
    ("qwen3", "<|im_start|>assistant\n<think>", "Opened by the template</think>OK", "Opened by the template", "OK"),
])
@pytest.mark.parametrize("step", [None, 1, 3])
def test_reasoning_parsers(name: str, prompt: str, text: str, reasoning: str | None, content: str | None,
                           step: int | None) -> None:
    s = ChoiceShaper(ToolPlan(), ServingOptions(reasoning_parser=name), prompt)
    if step is None:
        message = s.message(text)
        assert (message["reasoning_content"], message["content"] or None) == (reasoning, content)
        if content is None:  # all reasoning (cut off inside it): null content, as vLLM's, not ""
            assert message["content"] is None
        return
    deltas = stream(s, text, step)
    assert "".join(d.get("reasoning_content", "") for d in deltas) == (reasoning or "")
    assert "".join(d.get("content", "") for d in deltas) == (content or "")
    assert all("<think" not in d.get("content", "") + d.get("reasoning_content", "") for d in deltas)


def test_reasoning_then_tool_call_streamed() -> None:
    text = '<think>need weather</think><tool_call>\n{"name": "w", "arguments": {"c": "Oslo"}}\n</tool_call>'
    deltas = stream(shaper("hermes", "qwen3"), text, 2)
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "need weather"
    args = "".join(e["function"]["arguments"] for d in deltas for e in d.get("tool_calls", []))
    assert json.loads(args) == {"c": "Oslo"}
    assert "".join(d.get("content", "") for d in deltas) == ""


def test_unknown_parsers_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown tool call parser"):
        ServingOptions(True, "nope").check()
    with pytest.raises(ValueError, match="--tool-call-parser"):
        ServingOptions(True, None).check()
    with pytest.raises(ValueError, match="unknown reasoning parser"):
        ServingOptions(reasoning_parser="nope").check()
    with pytest.raises(ValueError, match=r"choose one of \[.*'hermes'.*'llama3_json'.*'mistral'"):
        ServingOptions(True, "not_a_parser").check()
    ServingOptions(True, "llama4_json").check()  # vLLM's other name of llama3_json


def test_mistral_call_ids_are_nine_alphanumerics_whatever_the_tool_choice() -> None:
    # Mistral's chat templates refuse other ids when the calls come back in the history.
    options = ServingOptions(True, "mistral")
    plans = [ToolPlan("auto"), ToolPlan("required"), ToolPlan("named", "f")]
    texts = ['[TOOL_CALLS]f{"a": 1}', '[{"name": "f", "parameters": {"a": 1}}]', '{"a": 1}']
    for plan, text in zip(plans, texts):
        calls = ChoiceShaper(plan, options, "").message(text)["tool_calls"]
        assert [c["function"]["name"] for c in calls] == ["f"]
        assert len(calls[0]["id"]) == 9 and calls[0]["id"].isalnum()
    other = ChoiceShaper(ToolPlan("required"), ServingOptions(True, "hermes"), "")
    assert other.message(texts[1])["tool_calls"][0]["id"].startswith("call_")


def test_mistral_v11_name_is_sent_whole_once_its_arguments_start() -> None:
    s = shaper("mistral")
    assert s.delta("[TOOL_CALLS]get_wea", False) == {}
    assert s.delta("[TOOL_CALLS]get_weather[AR", False) == {}
    first = s.delta('[TOOL_CALLS]get_weather[ARGS]{"ci', False)["tool_calls"][0]
    assert first["function"] == {"name": "get_weather", "arguments": '{"ci'}


@pytest.mark.parametrize("arguments,expected", [('{"city": "Oslo"}', {"city": "Oslo"}), ("", {}), (None, {}),
                                                ({"a": 1}, {"a": 1})])
def test_assistant_tool_call_arguments_reach_the_template_as_a_mapping(arguments, expected) -> None:
    # A call without parameters may come back with "" (or null) arguments: vLLM gives the
    # template {}, where json.loads("") was a 400.
    from pagedlm.entrypoints.openai.chat_utils import to_conversation
    from pagedlm.entrypoints.openai.protocol import ChatMessage

    call = {"id": "call_1", "type": "function", "function": {"name": "ping", "arguments": arguments}}
    conversation = to_conversation([ChatMessage(role="assistant", content=None, tool_calls=[call])])
    assert conversation[0]["tool_calls"][0]["function"]["arguments"] == expected


def test_required_tool_choice_with_pydantic_defs() -> None:
    # pydantic's schemas refer to "#/$defs/..." from the parameters' root; the required-call
    # array nests the parameters, so this was a 400 "Cannot find field '$defs'".
    import jsonschema

    from pagedlm.entrypoints.openai.errors import OpenAIError
    from pagedlm.entrypoints.openai.tool_calling import plan_tools

    unit = {"enum": ["c", "f"], "type": "string"}
    tools = [
        {"type": "function", "function": {"name": "weather", "parameters": {
            "$defs": {"Unit": unit}, "type": "object", "required": ["unit"],
            "properties": {"unit": {"$ref": "#/$defs/Unit"}}}}},
        {"type": "function", "function": {"name": "pick", "parameters": {
            "definitions": {"Item": {"type": "integer"}}, "type": "object",
            "properties": {"items": {"type": "array", "items": {"$ref": "#/definitions/Item"}}}}}},
    ]
    before = json.dumps(tools)
    plan = plan_tools(tools, "required", None, ServingOptions())
    assert json.dumps(tools) == before  # the chat template still sees the tools as given
    schema = plan.constraint.json
    jsonschema.validate([{"name": "weather", "parameters": {"unit": "c"}},
                         {"name": "pick", "parameters": {"items": [1, 2]}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "weather", "parameters": {"unit": "kelvin"}}], schema)
    other = {"type": "function", "function": {"name": "other", "parameters": {
        "$defs": {"Unit": {"type": "integer"}}, "type": "object", "properties": {"u": {"$ref": "#/$defs/Unit"}}}}}
    with pytest.raises(OpenAIError, match="Unit") as info:
        plan_tools(tools + [other], "required", None, ServingOptions())
    assert info.value.status == 400


def test_empty_tool_calls_of_a_replayed_reply_are_dropped(tmp_path) -> None:
    # Every chat reply has "tool_calls": []; a client sending the reply back as history
    # must not make a Llama 3.x-style template (which tests 'tool_calls' in message and
    # then wants exactly one call) fail with a 400.
    from pagedlm.demo import build_tokenizer
    from pagedlm.entrypoints.openai.chat_utils import render_chat
    from pagedlm.entrypoints.openai.protocol import ChatMessage

    tokenizer = build_tokenizer(tmp_path)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if 'tool_calls' in m %}{% if not m.tool_calls | length == 1 %}"
        "{{ raise_exception('This model only supports single tool-calls at once!') }}{% endif %}"
        "<call>{{ m.tool_calls[0].function.name }}</call>{% else %}<{{ m.role }}>{{ m.content }}{% endif %}"
        "{% endfor %}")
    messages = [ChatMessage(role="user", content="hi"),
                ChatMessage(role="assistant", content="Hello!", refusal=None, tool_calls=[]),
                ChatMessage(role="user", content="bye")]
    text, _ = render_chat(tokenizer, messages)
    assert text == "<user>hi<assistant>Hello!<user>bye"


def test_responses_output_with_reasoning_can_be_sent_back_as_input() -> None:
    # The Responses tool loop sends a response's output back as input, then the tool's result;
    # with --reasoning-parser that output has a "reasoning" item, which was a 400.
    from pagedlm.entrypoints.openai.serving_responses import ResponsesRequest, output_items, to_chat_request

    text = '<think>need weather</think><tool_call>\n{"name": "w", "arguments": {"c": "Oslo"}}\n</tool_call>'
    output = output_items(shaper("hermes", "qwen3").message(text))
    assert [item["type"] for item in output] == ["reasoning", "function_call"]
    request = ResponsesRequest(input=[{"role": "user", "content": "weather in Oslo?"}, *output,
                                      {"type": "function_call_output", "call_id": output[1]["call_id"],
                                       "output": "sunny"}])
    messages = [m.model_dump(exclude_none=True) for m in to_chat_request(request).messages]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["reasoning_content"] == "need weather"
    assert messages[1]["tool_calls"][0]["function"] == {"name": "w", "arguments": '{"c": "Oslo"}'}


@pytest.mark.parametrize("parser,marker,text", [
    ("mistral", "[TOOL_CALLS]", '[TOOL_CALLS][{"name": "add", "arguments": {"a": 1}}]'),
    ("hermes", "<tool_call>", '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'),
])
def test_tool_markers_that_are_special_tokens_reach_the_parser(tmp_path, parser, marker, text) -> None:
    # [TOOL_CALLS] is a special token in Mistral's tokenizers (<tool_call> in some Hermes
    # ones): the default skip_special_tokens dropped it from the text, so tool_choice "auto"
    # never found a call. As vLLM's parsers do, the request keeps special tokens.
    from pagedlm.demo import build_tokenizer
    from pagedlm.engine.detokenizer import IncrementalDetokenizer
    from pagedlm.entrypoints.openai.protocol import ChatCompletionRequest
    from pagedlm.entrypoints.openai.tool_calling import add_tool_constraint, plan_tools

    tokenizer = build_tokenizer(tmp_path)
    tokenizer.add_special_tokens({"additional_special_tokens": [marker]})
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "1+1"}], tools=tools)
    options = ServingOptions(True, parser)
    plan = plan_tools(request.tools, request.tool_choice, request.parallel_tool_calls, options)
    params = request.sampling_params(None, 50, {})
    add_tool_constraint(params, plan)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.convert_tokens_to_ids(marker) in ids
    detokenizer = IncrementalDetokenizer(tokenizer, [], params)
    detokenizer.update(ids + [tokenizer.eos_token_id], stop_terminated=True)
    message = ChoiceShaper(plan, options, "").message(detokenizer.output_text)
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == [
        ("add", {"a": 1})]
    none_plan = plan_tools(request.tools, "none", None, options)
    plain = request.sampling_params(None, 50, {})
    add_tool_constraint(plain, none_plan)
    assert plain.skip_special_tokens  # only where a tool parser reads the text
