"""More reasoning parsers (glm45, ...) on outputs from vLLM's tests for each: whole, and
streamed in random chunk sizes, where the deltas must assemble into the whole answer."""

from __future__ import annotations

import pytest

from parser_checks import check_reasoning_output, check_reasoning_stream, reasoning_shaper

from pagedlm.entrypoints.openai.tool_calling import ChoiceShaper, ServingOptions

# (parser, prompt, output, expected reasoning, expected content)
CASES = [
    # glm45 (vLLM's tests/reasoning/test_glm4_moe_reasoning_parser.py)
    ("glm45", "<|assistant|>", "<think>This is a reasoning section</think>This is the rest",
     "This is a reasoning section", "This is the rest"),
    ("glm45", "<|assistant|>", "<think>This is a reasoning section</think>", "This is a reasoning section", None),
    ("glm45", "<|assistant|>", "<think></think>This is the rest", None, "This is the rest"),
    ("glm45", "<|assistant|>", "This is the rest", None, "This is the rest"),
    ("glm45", "<|assistant|>", "<think>This is a reasoning section\nThat goes on</think>This is the rest\nThat continues",
     "This is a reasoning section\nThat goes on", "This is the rest\nThat continues"),
    ("glm45", "<|assistant|>", "\n<think>Plan.</think>\n\nAnswer.", "Plan.", "\n\nAnswer."),  # leading whitespace dropped
    ("glm45", "<|assistant|>", "abc</think>xyz", None, "abc</think>xyz"),  # an end without a start: all content
    # thinking disabled: the template closed an empty block in the prompt
    ("glm45", "<|assistant|>\n<think></think>\n", "Just the answer.", None, "Just the answer."),
]


def shaper(name: str, prompt: str) -> ChoiceShaper:
    return reasoning_shaper(name, prompt)


@pytest.mark.parametrize("name,prompt,text,reasoning,content", CASES)
def test_whole_output(name: str, prompt: str, text: str, reasoning: str | None, content: str | None) -> None:
    check_reasoning_output(name, prompt, text, reasoning, content)


@pytest.mark.parametrize("name,prompt,text,reasoning,content", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streamed_in_random_chunks(name: str, prompt: str, text: str, reasoning: str | None, content: str | None,
                                   seed: int) -> None:
    check_reasoning_stream(name, prompt, text, reasoning, content, seed)


def test_new_reasoning_parsers_are_flag_choices() -> None:
    from pagedlm.engine_args import EngineArgs
    from pagedlm.entrypoints.openai.reasoning import REASONING_PARSERS

    assert "glm45" in REASONING_PARSERS
    ServingOptions(reasoning_parser="glm45").check()
    assert EngineArgs(model="m", reasoning_parser="glm45")._structured_outputs().reasoning_parser == "glm45"
    from pagedlm.config import ConfigError
    with pytest.raises(ConfigError, match="glm45"):
        EngineArgs(model="m", reasoning_parser="nope")._structured_outputs()


def test_glm45_text_before_think_stays_content_as_streamed() -> None:
    # vLLM streams it as content, then drops it from the message; here both keep it
    text = "Hi <think>a</think>b"
    assert shaper("glm45", "").message(text)["content"] == "Hi b"
    s = shaper("glm45", "")
    assert s.delta("Hi <thi", False) == {"content": "Hi "}
    assert s.delta("Hi <think>a</think>b", True) == {"reasoning": "a", "reasoning_content": "a", "content": "b"}
