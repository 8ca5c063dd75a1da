"""Reasoning parsers hunyuan_a13b, ernie45, seed_oss, step3 on outputs from vLLM's tests for
each: whole, and streamed in random chunk sizes, where the deltas must assemble into the
whole answer."""

from __future__ import annotations

import pytest

from parser_checks import check_reasoning_output, check_reasoning_stream, reasoning_shaper

from pagedlm.entrypoints.openai.tool_calling import ChoiceShaper, ServingOptions

HY_THINK, HY_ANSWER, HY_END = "<think>\n", "\n</think>\n<answer>\n", "\n</answer>"

# (parser, prompt, output, expected reasoning, expected content)
CASES = [
    # hunyuan_a13b (vLLM's tests/reasoning/test_hunyuan_reasoning_parser.py)
    ("hunyuan_a13b", "", f"{HY_THINK}{HY_ANSWER}This is the rest{HY_END}", None, "This is the rest"),
    ("hunyuan_a13b", "", f"{HY_THINK}This is a reasoning section{HY_ANSWER}This is the rest{HY_END}",
     "This is a reasoning section", "This is the rest"),
    ("hunyuan_a13b", "", f"{HY_THINK}This is a reasoning section{HY_ANSWER}", "This is a reasoning section", None),
    ("hunyuan_a13b", "", f"{HY_THINK}This is a reasoning section!{HY_ANSWER}", "This is a reasoning section!", None),
    ("hunyuan_a13b", "", "This is content", None, "This is content"),
    ("hunyuan_a13b", "", f"{HY_THINK}This\nThat{HY_ANSWER}This is the rest\nThat", "This\nThat",
     "This is the rest\nThat"),
    ("hunyuan_a13b", "", f"{HY_THINK}This is a reasoning section{HY_ANSWER}This is the rest",
     "This is a reasoning section", "This is the rest"),
    ("hunyuan_a13b", "", f"{HY_THINK} reasoning here{HY_ANSWER} the answer{HY_END}", " reasoning here", " the answer"),
    # the prompt does not matter (vLLM's parser never sees it)
    ("hunyuan_a13b", "<think>\n", "This is content", None, "This is content"),
    # ernie45 (vLLM's tests/reasoning/test_ernie45_reasoning_parser.py)
    ("ernie45", "", "abc</think>def", "abc", "def"),
    ("ernie45", "", "abc", "abc", None),
    ("ernie45", "", "abc</think>", "abc", None),
    ("ernie45", "", "abc\nABC</think>def\nDEF", "abc\nABC", "def\nDEF"),
    # the two formats of its docstring: <response> unwrapped, newlines after </think> dropped
    ("ernie45", "", "abc\n</think>\n\n<response>\ndef\n</response>\n", "abc\n", "\ndef\n"),
    ("ernie45", "", "abc\n</think>\ndef", "abc\n", "def"),
    ("ernie45", "<think>\n", "<think>abc</think>def", "abc", "def"),
    ("ernie45", "<think>\n\n</think>\n\n", "def", None, "def"),  # the prompt closed the block
    # seed_oss (vLLM's tests/reasoning/test_seedoss_reasoning_parser.py)
    ("seed_oss", "", "This is a reasoning section</seed:think>This is the rest", "This is a reasoning section",
     "This is the rest"),
    ("seed_oss", "", "This is a reasoning section</seed:think>", "This is a reasoning section", None),
    ("seed_oss", "", "This is content", "This is content", None),
    ("seed_oss", "", "This\nThat</seed:think>This is the rest\nThat", "This\nThat", "This is the rest\nThat"),
    ("seed_oss", "", "<seed:think>This is a reasoning section</seed:think>This is the rest",
     "This is a reasoning section", "This is the rest"),
    ("seed_oss", "", "Some reasoning</seed:think>This is the rest", "Some reasoning", "This is the rest"),
    ("seed_oss", "", "Some reasoning content</seed:think>Final answer", "Some reasoning content", "Final answer"),
    # step3 (vLLM's step3: everything before </think> is reasoning)
    ("step3", "<think>\n", "abc</think>xyz", "abc", "xyz"),
    ("step3", "<think>\n", "abc", "abc", None),
    ("step3", "", "abc\nABC</think>", "abc\nABC", None),
    # an earlier turn's </think> in the prompt, then a fresh <think>: still reasoning
    ("step3", "a</think>b<think>", "abc</think>xyz", "abc", "xyz"),
]


def shaper(name: str, prompt: str) -> ChoiceShaper:
    return reasoning_shaper(name, prompt)


@pytest.mark.parametrize("name,prompt,text,reasoning,content", CASES)
def test_whole_output(name: str, prompt: str, text: str, reasoning: str | None, content: str | None) -> None:
    check_reasoning_output(name, prompt, text, reasoning, content)


@pytest.mark.parametrize("name,prompt,text,reasoning,content", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_streamed_in_random_chunks(name: str, prompt: str, text: str, reasoning: str | None, content: str | None,
                                   seed: int) -> None:
    check_reasoning_stream(name, prompt, text, reasoning, content, seed)


def test_new_reasoning_parsers_are_flag_choices() -> None:
    from pagedlm.engine_args import EngineArgs

    for name in ("hunyuan_a13b", "ernie45", "seed_oss", "step3"):
        ServingOptions(reasoning_parser=name).check()
        assert EngineArgs(model="m", reasoning_parser=name)._structured_outputs().reasoning_parser == name


def test_hunyuan_streams_markers_held_back() -> None:
    s = shaper("hunyuan_a13b", "")
    assert s.delta("<think", False) == {}
    assert s.delta("<think>\nplan\n</think>", False) == {"reasoning": "plan", "reasoning_content": "plan"}
    assert s.delta("<think>\nplan\n</think>\n<answer>\nok\n</ans", False) == {"content": "ok"}


def test_ernie45_holds_back_a_response_marker() -> None:
    s = shaper("ernie45", "")
    assert s.delta("abc</think>\n\n<resp", False) == {"reasoning": "abc", "reasoning_content": "abc"}
    assert s.delta("abc</think>\n\n<response>\nde", False) == {"content": "\nde"}
    assert s.delta("abc</think>\n\n<response>\ndef\n</resp", False) == {"content": "f\n"}
    assert s.delta("abc</think>\n\n<response>\ndef\n</response>\nmore", True) == {}


def test_hunyuan_refuses_structured_outputs_in_the_engine() -> None:
    from types import SimpleNamespace

    from pagedlm.structured_output.engine_setup import reasoning_markers
    from pagedlm.structured_output.manager import StructuredOutputManager
    from pagedlm.structured_output.validate import InvalidStructuredOutputError

    config = SimpleNamespace(structured_outputs_config=SimpleNamespace(reasoning_parser="hunyuan_a13b"))
    markers = reasoning_markers(config, lambda: pytest.fail("the vocabulary is not needed"))
    manager = StructuredOutputManager(lambda: None, markers)
    request = SimpleNamespace(sampling_params=SimpleNamespace(structured_outputs=SimpleNamespace(json="{}")))
    with pytest.raises(InvalidStructuredOutputError, match="hunyuan_a13b"):
        manager.add_request(request)
