"""Cross-encoder scoring's prompts (torch-free): a (query, document) pair encoded as one
sequence, ``[CLS] query [SEP] document [SEP]`` for BERT, with its token types (the document is
segment 1), as the tokenizer encodes a text pair and as vLLM's score prompts are built."""

from __future__ import annotations

from typing import Any

from pagedlm.engine.input_processor import InvalidRequestError


def pair_max_length(truncate_prompt_tokens: int | None, max_model_len: int) -> int | None:
    """truncate_prompt_tokens for a pair: the tokenizer cuts the pair to that many tokens
    (longest text first), -1 meaning max_model_len; None: no cut (too long is refused)."""
    if truncate_prompt_tokens is None:
        return None
    if truncate_prompt_tokens > max_model_len:
        raise InvalidRequestError(f"truncate_prompt_tokens ({truncate_prompt_tokens}) is greater than the maximum "
                                  f"model length ({max_model_len}); use at most that, or -1")
    return max_model_len if truncate_prompt_tokens == -1 else truncate_prompt_tokens


def cross_encoder_prompt(tokenizer: Any, text_1: str, text_2: str, max_length: int | None) -> dict[str, Any]:
    """-> a tokens prompt with ``token_type_ids`` (when the tokenizer gives them) and the pair's
    text as vLLM reports it (``text_1 + sep_token + text_2``)."""
    if not isinstance(text_1, str) or not isinstance(text_2, str):
        raise InvalidRequestError("a cross-encoder scores pairs of texts: give strings on both sides")
    kwargs: dict[str, Any] = {"truncation": True, "max_length": max_length} if max_length is not None else {}
    encoded = tokenizer(text=text_1, text_pair=text_2, **kwargs)
    prompt: dict[str, Any] = {"prompt_token_ids": list(encoded["input_ids"]),
                              "prompt": f"{text_1}{tokenizer.sep_token or ''}{text_2}"}
    if encoded.get("token_type_ids") is not None:
        prompt["token_type_ids"] = list(encoded["token_type_ids"])
    return prompt
