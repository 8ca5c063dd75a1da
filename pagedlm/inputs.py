"""Prompt types, as vLLM's ``vllm.inputs``: plain dicts with these keys (TypedDicts, so a
literal dict works the same)."""

from __future__ import annotations

from typing import NotRequired, TypedDict, Union


class TextPrompt(TypedDict):
    prompt: str
    cache_salt: NotRequired[str]  # its KV blocks are shared through the prefix cache only within this salt


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]
    prompt: NotRequired[str]  # the text, if known (reported back in RequestOutput.prompt)
    cache_salt: NotRequired[str]


PromptType = Union[str, TextPrompt, TokensPrompt, list[int]]

__all__ = ["TextPrompt", "TokensPrompt", "PromptType"]
