"""vLLM's ``vllm.engine.arg_utils`` import path: EngineArgs and AsyncEngineArgs are defined in
pagedlm.engine_args."""

from pagedlm.engine_args import AsyncEngineArgs, EngineArgs

__all__ = ["EngineArgs", "AsyncEngineArgs"]
