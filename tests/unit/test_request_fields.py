"""Request-body details of the OpenAI server that need no server: fields a request sends that
pagedlm does not know are logged (vLLM's behaviour), and beam-search text follows the
request's special-token settings."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from pagedlm.beam_search import BeamSearchParams
from pagedlm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from pagedlm.entrypoints.openai.serving_beam import BeamSearchStream
from pagedlm.sampling_params import SamplingParams


def test_unknown_fields_are_logged_not_refused(pagedlm_warnings: list[str]) -> None:
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], store=True, metadata={"a": 1})
    CompletionRequest(prompt="hi", max_tokens=2)
    assert request.unsupported_feature() is None
    assert pagedlm_warnings == ["The following fields were present in the request but ignored: ['metadata', 'store']"]


@pytest.mark.parametrize("name,value", [("logits_processors", ["m:P"]), ("structural_tag", "{}"),
                                        ("vllm_xargs", {"a": 1}), ("kv_transfer_params", {}),
                                        ("mm_processor_kwargs", {}), ("guided_whitespace_pattern", " ")])
def test_vllm_fields_pagedlm_lacks_are_refused(name: str, value: object) -> None:
    param, message = CompletionRequest(prompt="hi", **{name: value}).unsupported_feature()
    assert param == name and "not supported" in message


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
