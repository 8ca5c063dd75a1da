"""Older vLLM's ``vllm.transformers_utils.tokenizer.get_tokenizer``: pagedlm.tokenizers'."""

from pagedlm.tokenizers import get_tokenizer

__all__ = ["get_tokenizer"]
