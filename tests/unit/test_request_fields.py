"""Request-body details of the OpenAI server that need no server: fields a request sends that
pagedlm does not know are logged (vLLM's behaviour), and beam-search text follows the
request's special-token settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pagedlm.beam_search import BeamSearchParams
from pagedlm.entrypoints.openai.protocol import _UNSUPPORTED, ChatCompletionRequest, CompletionRequest
from pagedlm.entrypoints.openai.serving_beam import BeamSearchStream
from pagedlm.sampling_params import SamplingParams


def test_unknown_fields_are_logged_not_refused(pagedlm_warnings: list[str]) -> None:
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], store=True, metadata={"a": 1})
    CompletionRequest(prompt="hi", max_tokens=2)
    assert request.unsupported_feature() is None
    assert pagedlm_warnings == ["The following fields were present in the request but ignored: ['metadata', 'store']"]


@pytest.mark.parametrize("name,value", [("logits_processors", ["m:P"]), ("kv_transfer_params", {}),
                                        ("mm_processor_kwargs", {}), ("guided_whitespace_pattern", " ")])
def test_vllm_fields_pagedlm_lacks_are_refused(name: str, value: object) -> None:
    param, message = CompletionRequest(prompt="hi", **{name: value}).unsupported_feature()
    assert param == name and "not supported" in message


# vLLM's request fields pagedlm lacks (protocol._UNSUPPORTED): vLLM's default (or a value that
# means the same here) is accepted, anything else is a 400 naming the field; never dropped.
_OTHER = {"watermarking": True, "session_id": "s", "routed_experts_prompt_start": 2,
          "return_token_offsets": True, "return_mm_kwargs": False, "thinking_token_budget": 8,
          "ec_transfer_params": {"a": 1}, "media_io_kwargs": {"image": {}}}


@pytest.mark.parametrize("name", sorted(_UNSUPPORTED))
def test_every_vllm_field_pagedlm_lacks_is_declared_and_refused(name: str) -> None:
    no_op, why = _UNSUPPORTED[name]
    models = [m for m in (CompletionRequest, ChatCompletionRequest) if name in m.model_fields]
    assert models, f"{name} is in no request model"
    for model in models:
        base = {"prompt": "hi"} if model is CompletionRequest else {"messages": [{"role": "user", "content": "hi"}]}
        for value in no_op:
            assert model(**base, **{name: value}).unsupported_feature() is None, (name, value)
        other = _OTHER.get(name, {"x": 1})
        param, message = model(**base, **{name: other}).unsupported_feature()
        assert param == name and message.startswith(f"{name} is not supported") and why in message


def test_vllm_request_fields_are_all_declared() -> None:
    # vLLM's CompletionRequest / ChatCompletionRequest fields: each one works or is refused (none is
    # dropped as an unknown field).
    shared = {"model", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n", "presence_penalty",
              "seed", "stop", "stream", "stream_options", "temperature", "top_p", "user", "use_beam_search", "top_k",
              "min_p", "repetition_penalty", "watermarking", "length_penalty", "stop_token_ids",
              "include_stop_str_in_output", "ignore_eos", "min_tokens", "skip_special_tokens",
              "spaces_between_special_tokens", "truncate_prompt_tokens", "truncation_side", "allowed_token_ids",
              "prompt_logprobs", "logprob_token_ids", "bad_words", "add_special_tokens", "response_format",
              "structured_outputs", "priority", "request_id", "session_id", "return_tokens_as_token_ids",
              "return_token_ids", "routed_experts_prompt_start", "return_token_offsets", "return_mm_kwargs",
              "cache_salt", "kv_transfer_params", "ec_transfer_params", "vllm_xargs", "repetition_detection",
              "thinking_token_budget", "stream_interval", "best_of", "logits_processors", "guided_json",
              "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
              "guided_whitespace_pattern", "structural_tag"}
    completion = shared | {"prompt", "suffix", "prompt_embeds"}
    chat = shared | {"messages", "top_logprobs", "max_completion_tokens", "tools", "tool_choice", "reasoning_effort",
                     "include_reasoning", "parallel_tool_calls", "continue_final_message", "add_generation_prompt",
                     "documents", "chat_template", "chat_template_kwargs", "media_io_kwargs", "mm_processor_kwargs",
                     "return_prompt_text"}
    assert completion <= set(CompletionRequest.model_fields)
    assert chat <= set(ChatCompletionRequest.model_fields)


def test_reasoning_effort_reaches_the_chat_template(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.entrypoints.openai.chat_utils import render_chat

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_checkpoint(tmp_path / "ckpt"))
    tokenizer.chat_template = "{{ reasoning_effort }}/{{ enable_thinking }}"
    messages = [{"role": "user", "content": "hi"}]

    def rendered(**fields: object) -> str:
        request = ChatCompletionRequest(messages=messages, **fields)
        return render_chat(tokenizer, request.messages, template_kwargs=request.template_kwargs())[0]

    assert rendered(reasoning_effort="low") == "low/True"
    assert rendered(reasoning_effort="none") == "none/False"
    assert rendered(reasoning_effort="high", chat_template_kwargs={"enable_thinking": False}) == "high/False"
    assert rendered() == "/"
    with pytest.raises(ValueError, match="reasoning_effort"):
        ChatCompletionRequest(messages=messages, reasoning_effort="extreme")


def test_truncate_prompt_tokens_reaches_sampling_params() -> None:
    assert CompletionRequest(prompt="x", truncate_prompt_tokens=3).sampling_params(None, 4).truncate_prompt_tokens == 3
    with pytest.raises(ValueError, match="truncate_prompt_tokens"):
        CompletionRequest(prompt="x", truncate_prompt_tokens=-2).sampling_params(None, 4)


def test_beam_search_text_follows_skip_special_tokens(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from pagedlm.demo import build_tiny_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_checkpoint(tmp_path / "ckpt"))
    engine = SimpleNamespace(output_processor=SimpleNamespace(tokenizer=tokenizer))
    prompt = ("Hi", tokenizer.encode("Hi", add_special_tokens=False))
    ids = [tokenizer.bos_token_id, 65, 65]

    def text(**kw: bool) -> str:
        stream = BeamSearchStream(engine, "r", prompt, BeamSearchParams(beam_width=1, max_tokens=1), None,
                                  text_params=SamplingParams(**kw))
        return stream._decode(ids)

    assert text() == "]]"
    assert text(skip_special_tokens=False) == "<|begin_of_text|>]]"
