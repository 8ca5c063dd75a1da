"""vLLM's ``vllm.utils`` import path for what its example scripts take from it:
``FlexibleArgumentParser`` (pagedlm.flexible_args)."""

from pagedlm.flexible_args import FlexibleArgumentParser

__all__ = ["FlexibleArgumentParser"]
