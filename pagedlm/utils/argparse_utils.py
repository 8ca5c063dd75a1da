"""vLLM's ``vllm.utils.argparse_utils`` import path (newer vLLM's home of the parser)."""

from pagedlm.flexible_args import FlexibleArgumentParser

__all__ = ["FlexibleArgumentParser"]
