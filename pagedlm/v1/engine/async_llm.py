"""vLLM's ``vllm.v1.engine.async_llm`` import path."""

from pagedlm.engine.async_llm import AsyncLLM

__all__ = ["AsyncLLM"]
