"""vLLM's ``vllm.engine.async_llm_engine`` import path: its AsyncLLMEngine is the V1 AsyncLLM,
here pagedlm.engine.async_llm.AsyncLLM."""

from pagedlm.engine.async_llm import AsyncLLM

AsyncLLMEngine = AsyncLLM

__all__ = ["AsyncLLMEngine"]
