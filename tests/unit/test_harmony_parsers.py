"""gpt-oss's harmony format: the ``openai_gptoss`` reasoning parser and the ``openai`` tool
parser on synthetic outputs, whole and streamed (every split and random chunks), alone and
together, and the text they read from a tokenizer that has the harmony special tokens."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pagedlm.entrypoints.openai.tool_calling import ChoiceShaper, ServingOptions, plan_tools
from tests.unit.parser_checks import (check_reasoning_output, check_reasoning_stream, check_tool_output,
                                      check_tool_stream, random_chunks)

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("get_weather", "get_time")]
A = "<|channel|>analysis<|message|>"
NEXT = "<|end|><|start|>assistant"
FINAL = NEXT + "<|channel|>final<|message|>"
CALL_W = NEXT + '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}'
CALL_T = NEXT + ' to=functions.get_time<|channel|>commentary json<|message|>{"tz": "UTC"}'
PREAMBLE = NEXT + "<|channel|>commentary<|message|>Let me look that up."

# (output, reasoning, content) for --reasoning-parser openai_gptoss alone
REASONING = [
    (A + "The user greets.<|end|><|start|>assistant<|channel|>final<|message|>Hello!<|return|>",
     "The user greets.", "Hello!"),
    (A + "Think." + FINAL + "Hi!", "Think.", "Hi!"),  # <|return|> is a stop token: not in the text
    (A + "Still thinking when cut", "Still thinking when cut", None),
    ("<|channel|>final<|message|>No reasoning.", None, "No reasoning."),
    (A + "One.<|end|><|start|>assistant" + A + "Two." + FINAL + "Done.", "One.\nTwo.", "Done."),
    # vLLM's parse_chat_output: every non-analysis message is content, preambles and calls too
    (A + "Plan." + PREAMBLE + CALL_W, "Plan.", 'Let me look that up.\n{"city":"Paris"}'),
    (A + "No end marker<|channel|>final<|message|>Answer", "No end marker", "Answer"),
    (A + "a<|constrain|>b" + FINAL + "x<|endoftext|>y", "ab", "xy"),  # stray special tokens dropped
    ("Plain text, not harmony.", None, "Plain text, not harmony."),
    ("<|channel|>analysis", None, None),  # a header cut off
    (A, None, None),
    ("", None, None),
]

# (output, content, calls) for --tool-call-parser openai alone
TOOL_CALLS = [
    (A + "Need the weather." + CALL_W, None, [("get_weather", {"city": "Paris"})]),
    (A + "Need the weather." + CALL_W + "<|call|>", None, [("get_weather", {"city": "Paris"})]),
    (A + "Need both." + CALL_W + "<|call|><|start|>assistant" + CALL_T[len(NEXT):],
     None, [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]),
    (A + "Plan." + PREAMBLE + CALL_W, "Let me look that up.", [("get_weather", {"city": "Paris"})]),
    (" to=functions.get_time<|channel|>commentary json<|message|>{}", None, [("get_time", {})]),
    (A + "Think." + FINAL + "Sunny, 20C.", "Sunny, 20C.", []),
    ("Plain text, not harmony.", "Plain text, not harmony.", []),
    # built-in tools' messages (browser, python) are neither calls nor content, as vLLM's
    (A + "x<|end|><|start|>assistant<|channel|>analysis to=browser.search<|message|>{\"q\": 1}<|call|>"
     "<|start|>assistant<|channel|>final<|message|>ok", "ok", []),
]


@pytest.mark.parametrize("text,reasoning,content", REASONING)
def test_reasoning_whole(text: str, reasoning: str | None, content: str | None) -> None:
    check_reasoning_output("openai_gptoss", "<|start|>assistant", text, reasoning, content)


@pytest.mark.parametrize("text,reasoning,content", REASONING)
@pytest.mark.parametrize("seed", range(4))
def test_reasoning_streamed_in_random_chunks(text: str, reasoning: str | None, content: str | None,
                                             seed: int) -> None:
    check_reasoning_stream("openai_gptoss", "<|start|>assistant", text, reasoning, content, seed)


@pytest.mark.parametrize("text,reasoning,content", REASONING)
def test_reasoning_streamed_one_character_at_a_time(text: str, reasoning: str | None, content: str | None) -> None:
    s = ChoiceShaper(plan_tools(None, None, None, ServingOptions()), ServingOptions(reasoning_parser="openai_gptoss"),
                     "")
    deltas = [s.feed(ch, i == len(text) - 1) for i, ch in enumerate(text)] or [s.feed("", True)]
    streamed_reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    streamed_content = "".join(d.get("content", "") for d in deltas)
    assert (streamed_reasoning, streamed_content) == (reasoning or "", content or "")
    if text.startswith("<|"):  # harmony: no marker (nor a piece of one) ever reaches the client
        assert "<|" not in streamed_reasoning + streamed_content


def test_prompt_that_opens_the_final_message() -> None:
    # A template that ends with the final channel's header: the output is that message's body.
    check_reasoning_output("openai_gptoss", "<|start|>assistant<|channel|>final<|message|>", "Just this.",
                           None, "Just this.")
    check_reasoning_output("openai_gptoss", "<|start|>user<|message|>hi<|end|><|start|>assistant",
                           A + "r" + FINAL + "c", "r", "c")


@pytest.mark.parametrize("text,content,calls", TOOL_CALLS)
def test_tool_calls_whole(text: str, content: str | None, calls: list) -> None:
    check_tool_output("openai", TOOLS, text, content if content or calls else "", calls)


@pytest.mark.parametrize("text,content,calls", TOOL_CALLS)
@pytest.mark.parametrize("seed", range(4))
def test_tool_calls_streamed_in_random_chunks(text: str, content: str | None, calls: list, seed: int) -> None:
    check_tool_stream("openai", TOOLS, text, content, calls, seed)


def test_arguments_are_the_text_the_model_wrote() -> None:
    # vLLM's non-streamed reply re-serializes them (json.dumps); here they are as written, so
    # a stream's fragments concatenate to the same arguments as the whole reply's.
    options = ServingOptions(True, "openai")
    message = ChoiceShaper(plan_tools(TOOLS, "auto", None, options), options, "").message(A + "x" + CALL_W)
    assert message["tool_calls"][0]["function"]["arguments"] == '{"city":"Paris"}'
    assert message["tool_calls"][0]["id"].startswith("call_")


@pytest.mark.parametrize("text", [
    A + "x" + NEXT + '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city": "Pa',
    A + "x" + NEXT + "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>",
    A + "x" + NEXT + "<|channel|>commentary to=functions. json<|message|>{}<|call|>",  # no name
])
def test_cut_off_or_nameless_call_is_dropped(text: str) -> None:
    # max_tokens inside the arguments: vLLM keeps only finished messages; so here at the end a
    # call the output stops inside needs valid JSON arguments (<|call|> is a stop token).
    check_tool_output("openai", TOOLS, text, "", [])


OPEN_CALL = "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather " \
            "<|constrain|>json<|message|>"


@pytest.mark.parametrize("reasoning_parser", [None, "openai_gptoss"])
@pytest.mark.parametrize("seed", [None, 0, 1])
def test_prompt_that_opens_a_call(reasoning_parser: str | None, seed: int | None) -> None:
    """A prompt that ends inside a call's header (a template or prefill that opens it): the
    output is the call's arguments, whole or streamed, with or without the reasoning parser."""
    options = ServingOptions(True, "openai", reasoning_parser)
    shaper = ChoiceShaper(plan_tools(TOOLS, "auto", None, options), options, OPEN_CALL)
    output = '{"city":"Paris"}<|call|>'
    if seed is None:
        message = shaper.message(output)
        assert message["content"] is None and message.get("reasoning_content") is None
        calls = [(c["function"]["name"], c["function"]["arguments"]) for c in message["tool_calls"]]
    else:
        chunks = random_chunks(output, seed) if seed else list(output)
        deltas = [shaper.feed(chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
        assert not "".join(d.get("content", "") + d.get("reasoning_content", "") for d in deltas)
        entries = [e for d in deltas for e in d.get("tool_calls", [])]
        calls = [(entries[0]["function"]["name"], "".join(e["function"]["arguments"] for e in entries))]
    assert calls == [("get_weather", '{"city":"Paris"}')]
    assert shaper.finish_reason("stop", output) == "tool_calls"


def _both(tool_choice: str | None = "auto", parallel: bool | None = None) -> ChoiceShaper:
    options = ServingOptions(True, "openai", "openai_gptoss")
    return ChoiceShaper(plan_tools(TOOLS, tool_choice, parallel, options), options, "<|start|>assistant")


BOTH = A + "Need both." + PREAMBLE + CALL_W + "<|call|><|start|>assistant" + CALL_T[len(NEXT):]


def test_reasoning_and_tool_parsers_together_whole() -> None:
    message = _both().message(BOTH)
    assert message["reasoning_content"] == "Need both."
    assert message["content"] == "Let me look that up."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == [
        ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "UTC"})]
    assert _both().finish_reason("stop", BOTH) == "tool_calls"
    assert len(_both(parallel=False).message(BOTH)["tool_calls"]) == 1
    # tool_choice none: no tool parser, the reasoning parser's content (calls included, as vLLM's)
    plain = _both("none").message(BOTH)
    assert plain["tool_calls"] == [] and plain["reasoning_content"] == "Need both."
    assert plain["content"] == 'Let me look that up.\n{"city":"Paris"}\n{"tz": "UTC"}'


@pytest.mark.parametrize("seed", range(6))
def test_reasoning_and_tool_parsers_together_streamed(seed: int) -> None:
    s = _both()
    chunks = random_chunks(BOTH, seed) if seed else list(BOTH)
    deltas = [s.feed(chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks)]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Need both."
    assert "".join(d.get("content", "") for d in deltas) == "Let me look that up."
    calls: dict[int, list[str]] = {}
    for entry in (e for d in deltas for e in d.get("tool_calls", [])):
        if entry["index"] not in calls:
            assert entry["function"]["name"] and entry["id"]  # the name comes whole, first
            calls[entry["index"]] = [entry["function"]["name"], ""]
        calls[entry["index"]][1] += entry["function"]["arguments"]
    assert [(n, json.loads(a)) for n, a in calls.values()] == [("get_weather", {"city": "Paris"}),
                                                               ("get_time", {"tz": "UTC"})]


def test_registered_and_kept_special_tokens() -> None:
    from pagedlm.entrypoints.openai.reasoning import REASONING_PARSERS
    from pagedlm.entrypoints.openai.tool_parsers import TOOL_PARSERS

    assert REASONING_PARSERS["openai_gptoss"].keep_special_tokens
    assert TOOL_PARSERS["openai"].keep_special_tokens and TOOL_PARSERS["openai"].whole_output
    ServingOptions(True, "openai", "openai_gptoss").check()


def test_structured_outputs_are_refused_with_the_harmony_reasoning_parser() -> None:
    # The analysis ends at <|channel|>final<|message|>, three tokens: the engine core cannot
    # gate a constraint on it (as with granite's / hunyuan's text markers).
    from pagedlm.structured_output.engine_setup import reasoning_markers

    config = SimpleNamespace(structured_outputs_config=SimpleNamespace(reasoning_parser="openai_gptoss"))
    markers = reasoning_markers(config, lambda: None)
    assert markers.refused and "openai_gptoss" in markers.refused


HARMONY_TOKENS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"]


def test_harmony_special_tokens_reach_the_parsers(tmp_path) -> None:
    # The markers are special tokens of o200k_harmony: skip_special_tokens would drop them, so
    # both parsers keep them; <|call|> is a stop token, left out of the text.
    from pagedlm.demo import build_tokenizer
    from pagedlm.engine.detokenizer import IncrementalDetokenizer
    from pagedlm.entrypoints.openai.protocol import ChatCompletionRequest
    from pagedlm.entrypoints.openai.tool_calling import add_tool_constraint

    tokenizer = build_tokenizer(tmp_path)
    tokenizer.add_special_tokens({"additional_special_tokens": HARMONY_TOKENS})
    options = ServingOptions(True, "openai", "openai_gptoss")
    for tool_choice in ("auto", "none"):
        request = ChatCompletionRequest(messages=[{"role": "user", "content": "weather?"}], tools=TOOLS,
                                        tool_choice=tool_choice)
        plan = plan_tools(request.tools, request.tool_choice, request.parallel_tool_calls, options)
        params = request.sampling_params(None, 50, {})
        add_tool_constraint(params, plan, options)
        assert not params.skip_special_tokens
    text = A + "Need the weather." + CALL_W
    ids = tokenizer.encode(text + "<|call|>", add_special_tokens=False)
    assert tokenizer.convert_tokens_to_ids("<|channel|>") in ids
    detokenizer = IncrementalDetokenizer(tokenizer, [], params)
    detokenizer.update(ids, stop_terminated=True)
    assert detokenizer.output_text == text
    plan = plan_tools(TOOLS, "auto", None, options)
    message = ChoiceShaper(plan, options, "<|start|>assistant").message(detokenizer.output_text)
    assert message["reasoning_content"] == "Need the weather." and message["content"] is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message["tool_calls"]] == [
        ("get_weather", {"city": "Paris"})]


GPT_OSS_LIKE_TEMPLATE = (
    "<|start|>system<|message|>Reasoning: {{ reasoning_effort | default('medium') }}<|end|>"
    "{% if tools %}<|start|>developer<|message|># Tools\nnamespace functions { "
    "{% for t in tools %}type {{ t.function.name }} = () => any;{% endfor %}}<|end|>{% endif %}"
    "{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant{% endif %}")


def test_tools_and_reasoning_effort_reach_a_harmony_template(tmp_path) -> None:
    # gpt-oss's template reads reasoning_effort (system message) and tools (developer message).
    from pagedlm.demo import build_tokenizer
    from pagedlm.entrypoints.openai.chat_utils import render_chat
    from pagedlm.entrypoints.openai.protocol import ChatCompletionRequest

    tokenizer = build_tokenizer(tmp_path)
    tokenizer.chat_template = GPT_OSS_LIKE_TEMPLATE
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], tools=TOOLS, reasoning_effort="low")
    text, _ = render_chat(tokenizer, request.messages, True, False, request.tools, request.template_kwargs())
    assert text.startswith("<|start|>system<|message|>Reasoning: low<|end|><|start|>developer")
    assert "type get_weather = () => any;type get_time" in text and text.endswith("<|start|>assistant")
    bare = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}])
    text, _ = render_chat(tokenizer, bare.messages, True, False, bare.tools, bare.template_kwargs())
    assert "Reasoning: medium" in text and "developer" not in text


def test_earlier_reasoning_reaches_a_harmony_template_as_thinking(tmp_path) -> None:
    # gpt-oss's template renders a tool-call turn's analysis from message.thinking; vLLM's
    # harmony rendering takes it from reasoning (reasoning_content): both names lead there.
    from pagedlm.demo import build_tokenizer
    from pagedlm.entrypoints.llm import chat_prompts
    from pagedlm.entrypoints.openai.chat_utils import render_chat
    from pagedlm.entrypoints.openai.protocol import ChatCompletionRequest

    tokenizer = build_tokenizer(tmp_path)
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    messages = [{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": None, "reasoning_content": "Need the weather.", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m.thinking %}<|start|>assistant<|channel|>analysis<|message|>"
        "{{ m.thinking }}<|end|>{% endif %}{% if m.tool_calls %}<|start|>assistant to=functions."
        "{{ m.tool_calls[0].function.name }}<|channel|>commentary json<|message|>"
        "{{ m.tool_calls[0].function.arguments | tojson }}<|call|>{% endif %}{% endfor %}")
    expected = ('<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>'
                '<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Paris"}<|call|>')
    request = ChatCompletionRequest(messages=messages)
    assert render_chat(tokenizer, request.messages)[0] == expected
    assert chat_prompts(tokenizer, [messages], None)[0]["prompt"] == expected
    # (recent transformers alias reasoning_content to thinking themselves; pagedlm does it for
    # harmony templates whatever the version, and leaves other templates' messages as they are)
    from pagedlm.entrypoints.chat_content import harmony_thinking

    plain = [{"role": "assistant", "content": "", "reasoning": "r"}]
    assert harmony_thinking(plain, "{{ messages[0].thinking }}") == plain
    assert harmony_thinking(plain, "<|channel|>{{ messages[0].thinking }}")[0]["thinking"] == "r"
