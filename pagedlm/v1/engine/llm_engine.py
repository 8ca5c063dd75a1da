"""vLLM's ``vllm.v1.engine.llm_engine`` import path."""

from pagedlm.engine.llm_engine import LLMEngine

__all__ = ["LLMEngine"]
