"""Reasoning parsers granite (Granite 3.x text markers) and mistral (Magistral's [THINK] special
tokens): whole outputs, and the same outputs streamed in random chunk sizes and one character
at a time, whose deltas must assemble into the whole answer; and the hook that keeps special
tokens in the text for a parser whose markers are special tokens."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from parser_checks import check_reasoning_output, check_reasoning_stream, reasoning_shaper

from pagedlm.entrypoints.openai.tool_calling import ServingOptions, ToolPlan, add_tool_constraint

GT, GR = "Here is my thought process:", "Here is my response:"
MAGISTRAL_SYSTEM = "[SYSTEM_PROMPT]First draft your thinking process: [THINK]your thoughts[/THINK] " \
                   "then the answer.[/SYSTEM_PROMPT][INST]Hi[/INST]"

# (parser, prompt, output, expected reasoning, expected content)
CASES = [
    # granite (vLLM's tests/reasoning/test_granite_reasoning_parser.py)
    ("granite", "", f"{GT}This is a reasoning section{GR}This is the rest", "This is a reasoning section",
     "This is the rest"),
    ("granite", "", f"{GT}This is a reasoning section{GR}", "This is a reasoning section", None),
    ("granite", "", f"{GT}\nThis\nThat\n{GR}\nThis is the rest\nThat", "\nThis\nThat\n", "\nThis is the rest\nThat"),
    ("granite", "", "Here's my thought process:Thinking...Here's my response:Answer", "Thinking...", "Answer"),
    ("granite", "", f"{GT}A{GR}B{GR}C", "A", f"B{GR}C"),
    ("granite", "", "This is content", None, "This is content"),
    ("granite", "", "Here is my answer: 42", None, "Here is my answer: 42"),
    ("granite", "", "Here", None, "Here"),
    # cut off inside the thought process: reasoning (as vLLM's stream)
    ("granite", "", f"{GT}Still thinking. Here is", "Still thinking. Here is", None),
    ("granite", GT, "content", None, "content"),  # the prompt does not matter
    # mistral (vLLM's tests/reasoning/test_mistral_reasoning_parser.py)
    ("mistral", "", "[THINK]This is a reasoning section[/THINK]This is the rest", "This is a reasoning section",
     "This is the rest"),
    ("mistral", "", "[THINK]This is a reasoning section[/THINK]", "This is a reasoning section", None),
    ("mistral", "", "[THINK]This is a reasoning section", "This is a reasoning section", None),
    ("mistral", "", "This is content", None, "This is content"),
    ("mistral", "", "[THINK]This\nThat[/THINK]This is the rest\nThat", "This\nThat", "This is the rest\nThat"),
    ("mistral", "", "Before [THINK]reasoning[/THINK] after", "reasoning", "Before  after"),
    ("mistral", "", "Without a start[/THINK] token", None, "Without a start token"),
    ("mistral", "", "[THINK][/THINK]Only content", None, "Only content"),
    ("mistral", "", "[THINK]a [THINK] b[/THINK]c[/THINK]", "a [THINK] b", "c[/THINK]"),
    ("mistral", "", "[THIN", None, "[THIN"),
    # Magistral's system prompt shows both markers: the output still decides
    ("mistral", MAGISTRAL_SYSTEM, "[THINK]plan[/THINK]answer", "plan", "answer"),
    ("mistral", MAGISTRAL_SYSTEM, "just an answer", None, "just an answer"),
]


@pytest.mark.parametrize("name,prompt,text,reasoning,content", CASES)
def test_whole_output(name: str, prompt: str, text: str, reasoning: str | None, content: str | None) -> None:
    check_reasoning_output(name, prompt, text, reasoning, content)


@pytest.mark.parametrize("name,prompt,text,reasoning,content", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_streamed_in_random_chunks(name: str, prompt: str, text: str, reasoning: str | None, content: str | None,
                                   seed: int) -> None:
    check_reasoning_stream(name, prompt, text, reasoning, content, seed)


@pytest.mark.parametrize("name,prompt,text,reasoning,content", CASES)
def test_streamed_one_character_at_a_time(name: str, prompt: str, text: str, reasoning: str | None,
                                          content: str | None) -> None:
    s = reasoning_shaper(name, prompt)
    deltas = [s.feed(ch, i == len(text) - 1) for i, ch in enumerate(text)]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == (reasoning or "")
    assert "".join(d.get("content", "") for d in deltas) == (content or "")


def test_granite_holds_back_a_partial_response_marker() -> None:
    s = reasoning_shaper("granite", "")
    assert s.delta("Here is my thought", False) == {}
    assert s.delta(f"{GT} plan. Here is my res", False) == {"reasoning": " plan. ", "reasoning_content": " plan. "}
    assert s.delta(f"{GT} plan. Here is my response: ok", False) == {"content": " ok"}


def test_mistral_keeps_special_tokens_whatever_the_tool_choice() -> None:
    for name, keep in (("mistral", True), ("qwen3", False), ("granite", False)):
        params = SimpleNamespace(skip_special_tokens=True, structured_outputs=None)
        add_tool_constraint(params, ToolPlan(), ServingOptions(reasoning_parser=name))
        assert params.skip_special_tokens is (not keep)
    params = SimpleNamespace(skip_special_tokens=True, structured_outputs=None)
    add_tool_constraint(params, ToolPlan())
    assert params.skip_special_tokens is True


def test_new_reasoning_parsers_are_flag_choices() -> None:
    from pagedlm.engine_args import EngineArgs

    for name in ("granite", "mistral"):
        ServingOptions(reasoning_parser=name).check()
        assert EngineArgs(model="m", reasoning_parser=name)._structured_outputs().reasoning_parser == name


def test_granite_refuses_structured_outputs_in_the_engine() -> None:
    from pagedlm.structured_output.engine_setup import reasoning_markers

    config = SimpleNamespace(structured_outputs_config=SimpleNamespace(reasoning_parser="granite"))
    markers = reasoning_markers(config, lambda: pytest.fail("the vocabulary is not needed"))
    assert markers.refused and "granite" in markers.refused
