"""Prompts and sampling params -> validated engine Requests (tokenize, check, fill defaults)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

from pagedlm.config import ModelConfig
from pagedlm.engine.request import Request
from pagedlm.sampling_params import SamplingParams

# str | {"prompt": str} | {"prompt_token_ids": [...]} | list[int]
PromptType = Union[str, dict, list]


class InvalidRequestError(ValueError):
    """The request cannot be served as given; the message says which field and why."""


def load_tokenizer(model_config: ModelConfig):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_config.tokenizer)
    except (OSError, ValueError) as e:
        raise InvalidRequestError(f"could not load a tokenizer from {model_config.tokenizer!r}: {e}") from e
    if model_config.chat_template is not None:
        tokenizer.chat_template = model_config.chat_template
    return tokenizer


def generation_eos_ids(model_dir: str) -> list[int]:
    """Extra EOS ids a checkpoint's generation_config.json names (e.g. Llama 3's <|eom_id|>)."""
    path = Path(model_dir) / "generation_config.json"
    if not path.exists():
        return []
    eos = json.loads(path.read_text()).get("eos_token_id")
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


class InputProcessor:
    def __init__(self, model_config: ModelConfig, tokenizer: Any) -> None:
        self.model_config = model_config
        self.tokenizer = tokenizer
        self.vocab_size = model_config.vocab_size
        self.max_model_len = model_config.max_model_len
        self.eos_token_id = tokenizer.eos_token_id if tokenizer is not None else None
        if self.eos_token_id is None:
            eos = getattr(model_config.hf_config, "eos_token_id", None)
            self.eos_token_id = eos if isinstance(eos, int) else (eos[0] if eos else None)
        self.extra_eos_ids = [t for t in generation_eos_ids(model_config.model) if t != self.eos_token_id]

    def tokenize_prompt(self, prompt: PromptType) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt)
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return prompt.get("prompt"), list(prompt["prompt_token_ids"])
            if "prompt" in prompt:
                return prompt["prompt"], self.tokenizer.encode(prompt["prompt"])
            raise InvalidRequestError("a prompt dict needs 'prompt' or 'prompt_token_ids'")
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            return None, list(prompt)
        raise InvalidRequestError(f"prompt must be a string, a list of token ids or a dict, got {type(prompt).__name__}")

    def validate_prompt(self, token_ids: list[int]) -> None:
        if not token_ids:
            raise InvalidRequestError("The prompt cannot be empty.")
        bad = [t for t in token_ids if not isinstance(t, int) or not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(f"Token ids {bad[:5]} are out of vocabulary (size {self.vocab_size}).")
        if len(token_ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"The prompt (length {len(token_ids)}) is too long: it must be shorter than the maximum "
                f"model length of {self.max_model_len} to leave room for at least one generated token."
            )

    def prepare_params(self, params: SamplingParams, num_prompt_tokens: int) -> SamplingParams:
        params = params.clone()
        try:
            params.verify_vocab(self.vocab_size)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        if params.max_tokens is None:
            params.max_tokens = self.max_model_len - num_prompt_tokens
        if not params.ignore_eos:
            params.stop_token_ids = list(dict.fromkeys(params.stop_token_ids + self.extra_eos_ids))
        params.all_stop_token_ids = set(params.stop_token_ids)
        if self.eos_token_id is not None and not params.ignore_eos:
            params.all_stop_token_ids.add(self.eos_token_id)
        if params.bad_words:
            params.bad_words_token_ids = self._tokenize_bad_words(params.bad_words)
        return params

    def _tokenize_bad_words(self, words: list[str]) -> list[list[int]]:
        # A word can appear at the start of the text or after a space, which byte-level
        # BPEs tokenize differently: ban both forms.
        out: list[list[int]] = []
        for word in words:
            for text in (word.lstrip(), " " + word.lstrip()):
                ids = self.tokenizer.encode(text, add_special_tokens=False)
                if ids and ids not in out:
                    out.append(ids)
        return out

    def process(self, request_id: str, prompt: PromptType, params: SamplingParams,
                arrival_time: float | None = None) -> tuple[str | None, Request]:
        """-> (prompt text if known, Request). Raises InvalidRequestError on bad input."""
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"sampling params must be SamplingParams, got {type(params).__name__}")
        text, token_ids = self.tokenize_prompt(prompt)
        self.validate_prompt(token_ids)
        params = self.prepare_params(params, len(token_ids))
        request = Request(request_id, token_ids, params, self.eos_token_id, arrival_time)
        return text, request
