"""Cross-encoder scoring's prompts (torch-free): a (query, document) pair encoded as one
sequence, ``[CLS] query [SEP] document [SEP]`` for BERT, with its token types (the document is
segment 1), as the tokenizer encodes a text pair and as vLLM's score prompts are built; a
decoder cross-encoder gets its tokenizer's pair encoding without token types."""

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


def cross_encoder_prompt(tokenizer: Any, text_1: str, text_2: str, max_length: int | None,
                         hf_config: Any = None) -> dict[str, Any]:
    """-> a tokens prompt and the pair's text as vLLM reports it (``text_1 + sep_token + text_2``).

    vLLM's rule: the tokenizer's pair encoding (``use_pad_token``, the default; a decoder's
    tokenizer joins the texts by its template, e.g. Llama's ``<s> a <s> b``), or with
    ``use_pad_token: false`` in the config the two texts concatenated and encoded as one.
    Token types go with the prompt only for a model that has a second token type
    (``type_vocab_size >= 2``: BERT); decoders take none."""
    if not isinstance(text_1, str) or not isinstance(text_2, str):
        raise InvalidRequestError("a cross-encoder scores pairs of texts: give strings on both sides")
    kwargs: dict[str, Any] = {"truncation": True, "max_length": max_length} if max_length is not None else {}
    if getattr(hf_config, "use_pad_token", True):
        encoded = tokenizer(text=text_1, text_pair=text_2, **kwargs)
        text = f"{text_1}{tokenizer.sep_token or ''}{text_2}"
    else:
        text = text_1 + text_2
        encoded = tokenizer(text=text, **kwargs)
    prompt: dict[str, Any] = {"prompt_token_ids": list(encoded["input_ids"]), "prompt": text}
    has_token_types = hf_config is None or int(getattr(hf_config, "type_vocab_size", 0) or 0) >= 2
    if has_token_types and encoded.get("token_type_ids") is not None:
        prompt["token_type_ids"] = list(encoded["token_type_ids"])
    return prompt
