"""Structured outputs, tool calling and reasoning through a real ``pagedlm serve`` and the
official openai client. The checkpoint has random weights, so only the constraint makes the
arguments valid; its tokenizer has <think>/</think>/<tool_call> tokens and the model's vocab
is padded beyond the tokenizer's (xgrammar must use the model's size)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("xgrammar")

from e2e_helpers import API_KEY, Server, running_server  # noqa: E402

TEMPLATE = (
    "{{ bos_token }}{% for d in documents or [] %}<doc>{{ d['title'] }}: {{ d['text'] }}</doc>{% endfor %}"
    "{% if tools %}<|start_header_id|>system<|end_header_id|>\n\nTools:"
    "{% for t in tools %} {{ t['function']['name'] }}{% endfor %}<|eot_id|>{% endif %}"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% for c in m.get('tool_calls') or [] %}<tool_call>{{ c['function']['arguments'] | tojson }}</tool_call>"
    "{% endfor %}{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    # Like Qwen3: thinking opens the block in the prompt; otherwise an empty block closes it.
    "{% if enable_thinking %}<think>{% else %}<think></think>{% endif %}{% endif %}"
)
WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}, "days": {"type": "integer", "minimum": 1,
                                                                          "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a"], "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add_one", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add_one": ADD}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
PET = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}, "age": {"type": "integer", "minimum": 0,
                                                                                  "maximum": 20}},
       "required": ["kind", "age"], "additionalProperties": False}


def build_checkpoint(path: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pagedlm.demo import build_tiny_checkpoint

    build_tiny_checkpoint(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.add_tokens(["<think>", "</think>", "<tool_call>", "</tool_call>"])
    tokenizer.save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tokenizer) + 28, mean_resizing=False)  # padded model vocab
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    ckpt = build_checkpoint(tmp_path_factory.mktemp("tools_ckpt"))
    template = tmp_path_factory.mktemp("tpl") / "template.jinja"
    template.write_text(TEMPLATE)
    args = [str(ckpt), "--served-model-name", "tiny", "--max-model-len", "512", "--num-gpu-blocks-override", "256",
            "--device", "cpu", "--api-key", API_KEY, "--chat-template", str(template), "--enable-auto-tool-choice",
            "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3"]
    with running_server(args, tmp_path_factory.mktemp("tools_server") / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def oai(tool_server: Server):
    import openai

    return openai.OpenAI(base_url=f"{tool_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def check_calls(calls: list, names: set[str] | None = None) -> None:
    assert calls
    for call in calls:
        assert call.id and call.type == "function"
        assert names is None or call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def collect_stream(stream) -> tuple[dict[int, dict], str | None, str, str]:
    """-> (calls by index {id, name, arguments}, finish_reason, content, reasoning)."""
    calls: dict[int, dict] = {}
    finish, content, reasoning = None, "", ""
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta
        content += delta.content or ""
        reasoning += getattr(delta, "reasoning_content", None) or ""
        assert getattr(delta, "reasoning", None) == getattr(delta, "reasoning_content", None)  # both names
        for tc in delta.tool_calls or []:
            if tc.index not in calls:  # the first fragment of a call names it
                assert tc.id and tc.function.name
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
            else:
                assert tc.function.name is None
            calls[tc.index]["arguments"] += tc.function.arguments or ""
        finish = choice.finish_reason or finish
    return calls, finish, content, reasoning


def test_tool_choice_required_gives_valid_calls(oai) -> None:
    resp = oai.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                       max_tokens=300, n=4, temperature=1.0, seed=0)
    for choice in resp.choices:
        assert choice.finish_reason == "tool_calls", choice.message
        check_calls(choice.message.tool_calls, set(SCHEMAS))


def test_named_tool_choice_gives_valid_arguments(oai) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    resp = oai.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=choice,
                                       max_tokens=100, n=4, temperature=1.0)
    for c in resp.choices:
        check_calls(c.message.tool_calls, {"get_weather"})
        assert len(c.message.tool_calls) == 1


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "add_one"}}])
def test_streamed_tool_calls_concatenate_to_valid_arguments(oai, tool_choice) -> None:
    for seed in range(3):
        stream = oai.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice,
                                             max_tokens=200, temperature=1.0, seed=seed, stream=True,
                                             parallel_tool_calls=False)  # a random model may add calls forever
        calls, finish, _, _ = collect_stream(stream)
        assert finish == ("tool_calls" if tool_choice == "required" else "stop")
        for call in calls.values():
            jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])
        same = oai.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice,
                                           max_tokens=200, temperature=1.0, seed=seed,
                                           parallel_tool_calls=False)
        full = same.choices[0].message.tool_calls
        assert [(c.function.name, c.function.arguments) for c in full] == [
            (c["name"], c["arguments"]) for c in calls.values()]


HERMES_REGEX = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "(Paris|Rome)", "days": [1-7]\}\}\n</tool_call>'


@pytest.mark.parametrize("stream", [False, True])
def test_auto_tool_choice_parses_hermes_calls(oai, stream) -> None:
    # The regex makes the model write a Hermes call; the parser must find it (no constraint
    # is involved in parsing: tool_choice stays "auto").
    kwargs = dict(model="tiny", messages=MESSAGES, tools=TOOLS, max_tokens=80, temperature=1.0,
                  extra_body={"guided_regex": r"Sure\.\n" + HERMES_REGEX})
    if stream:
        calls, finish, content, _ = collect_stream(oai.chat.completions.create(stream=True, **kwargs))
        assert [c["name"] for c in calls.values()] == ["get_weather"]
        jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER)
    else:
        choice = oai.chat.completions.create(**kwargs).choices[0]
        finish, content = choice.finish_reason, choice.message.content
        check_calls(choice.message.tool_calls, {"get_weather"})
    assert finish == "tool_calls"
    assert content.strip() == "Sure."


@pytest.mark.parametrize("stream", [False, True])
def test_response_format_json_schema_after_reasoning(oai, tool_server, stream) -> None:
    import httpx

    ids = httpx.post(f"{tool_server.url}/tokenize", json={"prompt": "<think></think>", "add_special_tokens": False},
                     headers=tool_server.headers).json()["tokens"]
    # The prompt opens a reasoning block; </think> is made likely so it ends soon: the
    # constraint applies only after it (before, the model writes anything).
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "a pet"}], max_tokens=120, temperature=1.0,
                  response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": PET, "strict": True}},
                  logit_bias={str(ids[1]): 5}, extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    reasonings = []
    for seed in range(3):
        if stream:
            _, finish, content, reasoning = collect_stream(oai.chat.completions.create(stream=True, seed=seed, **kwargs))
        else:
            message = oai.chat.completions.create(seed=seed, **kwargs).choices[0].message
            content, reasoning = message.content, message.reasoning_content
            assert message.reasoning == reasoning  # current vLLM's name, beside the older one
        jsonschema.validate(json.loads(content), PET)
        assert "</think>" not in (reasoning or "")
        reasonings.append(reasoning)
    assert any(reasonings)  # some seeds reasoned before answering


@pytest.mark.parametrize("stream", [False, True])
def test_include_reasoning_false_drops_the_reasoning(oai, tool_server, stream) -> None:
    """include_reasoning (vLLM's): false keeps the parsed reasoning out of the answer, the
    content stays the same (same seed, same tokens)."""
    import httpx

    ids = httpx.post(f"{tool_server.url}/tokenize", json={"prompt": "<think></think>", "add_special_tokens": False},
                     headers=tool_server.headers).json()["tokens"]
    kwargs = dict(model="tiny", messages=[{"role": "user", "content": "a pet"}], max_tokens=40, temperature=1.0,
                  logit_bias={str(ids[1]): 3}, extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    for seed in range(8):
        if stream:
            _, _, content, reasoning = collect_stream(oai.chat.completions.create(stream=True, seed=seed, **kwargs))
            _, _, content_off, reasoning_off = collect_stream(oai.chat.completions.create(
                stream=True, seed=seed, **{**kwargs, "extra_body": {**kwargs["extra_body"], "include_reasoning": False}}))
        else:
            on = oai.chat.completions.create(seed=seed, **kwargs).choices[0].message
            off = oai.chat.completions.create(
                seed=seed, **{**kwargs, "extra_body": {**kwargs["extra_body"], "include_reasoning": False}}).choices[0].message
            content, reasoning, content_off, reasoning_off = on.content, on.reasoning_content, off.content, \
                off.reasoning_content
        if reasoning and content:
            assert not reasoning_off and content_off == content
            return
    pytest.fail("no seed gave both reasoning and content")


def test_documents_reach_the_chat_template(oai) -> None:
    plain = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1)
    with_docs = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1, extra_body={
        "documents": [{"title": "Paris", "text": "sunny and warm all week"}]})
    assert with_docs.usage.prompt_tokens > plain.usage.prompt_tokens + 5


def test_tokenize_counts_what_chat_renders(oai, tool_server) -> None:
    """/tokenize with messages and tools counts the prompt the chat endpoint would run."""
    import httpx

    body = {"messages": MESSAGES, "tools": TOOLS}
    counted = httpx.post(f"{tool_server.url}/tokenize", json=body, headers=tool_server.headers).json()["count"]
    plain = httpx.post(f"{tool_server.url}/tokenize", json={"messages": MESSAGES},
                       headers=tool_server.headers).json()["count"]
    ran = oai.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="none", max_tokens=1)
    assert counted == ran.usage.prompt_tokens > plain


def test_chat_template_receives_tools_and_tool_messages(oai) -> None:
    plain = oai.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=1)
    with_tools = oai.chat.completions.create(model="tiny", messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                             max_tokens=1)
    assert with_tools.usage.prompt_tokens > plain.usage.prompt_tokens
    history = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add_one", "arguments": '{"a": 41}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
    ]
    turn = oai.chat.completions.create(model="tiny", messages=history, tools=TOOLS, tool_choice="none", max_tokens=1)
    assert turn.usage.prompt_tokens > with_tools.usage.prompt_tokens + 5


def test_invalid_schema_is_a_400_before_streaming(oai) -> None:
    import openai

    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
                                                                         "properties": {"a": {"type": "nope"}}}}}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="not a valid JSON schema"):
            oai.chat.completions.create(model="tiny", messages=MESSAGES, response_format=bad, stream=stream)
    bad_tool = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": 3}}}]
    with pytest.raises(openai.BadRequestError, match="tools"):
        oai.chat.completions.create(model="tiny", messages=MESSAGES, tools=bad_tool, tool_choice="required")


RESP_TOOLS = [{"type": "function", "name": t["function"]["name"], "parameters": t["function"]["parameters"]}
              for t in TOOLS]


def test_responses_text_and_json_schema(oai) -> None:
    resp = oai.responses.create(model="tiny", input="Hello", instructions="Be brief.", max_output_tokens=6,
                                temperature=0.0)
    assert resp.object == "response" and resp.status == "incomplete"  # random weights: cut at the limit
    assert resp.output[0].type == "message" and resp.output_text
    assert resp.usage.output_tokens == 6
    fmt = {"format": {"type": "json_schema", "name": "pet", "schema": PET, "strict": True}}
    for seed in range(3):
        resp = oai.responses.create(model="tiny", input="A pet:", text=fmt, max_output_tokens=100, temperature=1.0,
                                    extra_body={"seed": seed})
        assert resp.status == "completed"
        jsonschema.validate(json.loads(resp.output_text), PET)


def test_responses_required_tool_non_streaming_and_streaming(oai) -> None:
    resp = oai.responses.create(model="tiny", input="weather?", tools=RESP_TOOLS, tool_choice="required",
                                parallel_tool_calls=False, max_output_tokens=200, temperature=1.0)
    (call,) = [item for item in resp.output if item.type == "function_call"]
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    assert call.call_id.startswith("call_")
    stream = oai.responses.create(model="tiny", input="weather?", tools=RESP_TOOLS,
                                  tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=200,
                                  temperature=1.0, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = kinds.index("response.output_item.added")
    assert events[added].item.name == "get_weather"  # the name comes before any argument fragment
    assert added < kinds.index("response.function_call_arguments.delta")
    fragments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert fragments == done.arguments
    jsonschema.validate(json.loads(fragments), WEATHER)
    final = events[-1].response.output
    assert [i.arguments for i in final if i.type == "function_call"] == [fragments]


def test_responses_tool_history_and_unsupported_fields(oai) -> None:
    import openai

    history = [
        {"role": "user", "content": "add one to 41"},
        {"type": "function_call", "call_id": "call_1", "name": "add_one", "arguments": '{"a": 41}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "42"},
    ]
    resp = oai.responses.create(model="tiny", input=history, tools=RESP_TOOLS, tool_choice="none", max_output_tokens=2)
    assert resp.usage.input_tokens > 20
    with pytest.raises(openai.NotFoundError, match="resp_1"):  # as vLLM: nothing is stored
        oai.responses.create(model="tiny", input="x", previous_response_id="resp_1")
    with pytest.raises(openai.BadRequestError, match="background"):
        oai.responses.create(model="tiny", input="x", background=True)
    with pytest.raises(openai.BadRequestError, match="text.verbosity"):
        oai.responses.create(model="tiny", input="x", text={"format": {"type": "text"}, "verbosity": "low"})


def test_completions_guided_choice_and_structured_outputs_extra(oai) -> None:
    # This server has --reasoning-parser qwen3: a prompt that closes the reasoning block makes
    # the constraint apply from the first token (otherwise the model may open one first).
    choices = ["red", "green", "blue sky"]
    resp = oai.completions.create(model="tiny", prompt="<think></think>Colour:", n=6, max_tokens=10, temperature=1.0,
                                  extra_body={"guided_choice": choices})
    assert all(c.text in choices for c in resp.choices)
    resp = oai.completions.create(model="tiny", prompt="<think></think>Code:", n=4, max_tokens=16, temperature=1.0,
                                  extra_body={"structured_outputs": {"regex": "[A-Z]{2}-[0-9]{3}"}})
    assert all(re.fullmatch("[A-Z]{2}-[0-9]{3}", c.text) for c in resp.choices)


def raw_chunks(server: Server, body: dict) -> list[dict]:
    """The chat stream's chunks as sent (the openai client turns a missing key into None)."""
    import httpx

    chunks = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={"model": "tiny", "stream": True, **body},
                      headers=server.headers, timeout=120) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: "):]))
    return chunks


def check_no_empty_deltas(chunks: list[dict]) -> None:
    """vLLM sends no chunk for a step whose delta is empty (the parsers held the text back);
    only the choice's final chunk (finish_reason) may have an empty delta."""
    choices = [c for chunk in chunks for c in chunk["choices"]]
    assert choices[0]["delta"]["role"] == "assistant"
    for choice in choices:
        assert choice["delta"] or choice["finish_reason"] is not None, choices
    assert choices[-1]["finish_reason"] is not None


@pytest.mark.parametrize("logprobs", [False, True])
def test_auto_tool_stream_sends_no_empty_deltas(oai, tool_server, logprobs) -> None:
    """While the hermes parser holds a call back (its name not complete yet), nothing goes out;
    the held-back tokens' logprobs come with the next chunk, so none is lost."""
    body = {"messages": MESSAGES, "tools": TOOLS, "max_tokens": 80, "temperature": 1.0, "seed": 0,
            "guided_regex": r"Sure\.\n" + HERMES_REGEX, "logprobs": logprobs, "stream_options": {"include_usage": True}}
    chunks = raw_chunks(tool_server, body)
    check_no_empty_deltas(chunks)
    assert any(c["delta"].get("tool_calls") for chunk in chunks for c in chunk["choices"])
    if logprobs:
        streamed = [e for chunk in chunks for c in chunk["choices"] if c["logprobs"] for e in c["logprobs"]["content"]]
        assert len(streamed) == chunks[-1]["usage"]["completion_tokens"]


def test_reasoning_stream_sends_no_empty_deltas(oai, tool_server) -> None:
    """The qwen3 reasoning parser holds back <think> / </think>: no empty chunk for them either."""
    import httpx

    ids = httpx.post(f"{tool_server.url}/tokenize", json={"prompt": "<think></think>", "add_special_tokens": False},
                     headers=tool_server.headers).json()["tokens"]
    body = {"messages": [{"role": "user", "content": "a pet"}], "max_tokens": 40, "temperature": 1.0,
            "logit_bias": {str(ids[1]): 3}, "chat_template_kwargs": {"enable_thinking": True}}
    for seed in range(4):
        check_no_empty_deltas(raw_chunks(tool_server, {**body, "seed": seed}))
