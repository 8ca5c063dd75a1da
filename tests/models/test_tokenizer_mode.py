"""--tokenizer-mode (vLLM): slow asks transformers for the Python tokenizer (use_fast=False) and,
where the model has none (the tiny checkpoints; most models from transformers 5 on), serves with
the fast one after one notice; hf is auto; mistral is refused (it needs mistral_common)."""

from __future__ import annotations

import logging

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.config import ConfigError


def test_slow_asks_for_the_python_tokenizer(llama_checkpoint, monkeypatch, caplog) -> None:
    import transformers

    asked = []
    real = transformers.AutoTokenizer.from_pretrained

    def recording(path, *args, **kwargs):
        asked.append(kwargs.get("use_fast"))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recording)
    logger = logging.getLogger("pagedlm")  # it does not propagate: attach caplog's handler
    logger.addHandler(caplog.handler)
    try:
        llm = LLM(llama_checkpoint, device="cpu", max_model_len=128, tokenizer_mode="slow")
        out = llm.generate("hello there", SamplingParams(temperature=0, max_tokens=3, ignore_eos=True),
                           use_tqdm=False)[0]
    finally:
        logger.removeHandler(caplog.handler)
    assert asked and all(a is False for a in asked)
    assert len(out.outputs[0].token_ids) == 3
    notices = [r for r in caplog.records if "--tokenizer-mode slow" in r.getMessage()]
    assert len(notices) == 1


@pytest.mark.parametrize("mode", ["auto", "hf"])
def test_auto_and_hf_take_the_fast_tokenizer(llama_checkpoint, mode) -> None:
    llm = LLM(llama_checkpoint, device="cpu", max_model_len=128, tokenizer_mode=mode)
    assert llm.get_tokenizer().is_fast
    assert llm.llm_engine.model_config.tokenizer_mode == "auto"


def test_mistral_is_refused(llama_checkpoint) -> None:
    with pytest.raises(ConfigError, match="mistral_common"):
        LLM(llama_checkpoint, device="cpu", tokenizer_mode="mistral")
