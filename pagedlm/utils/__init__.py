"""vLLM's ``vllm.utils`` import path for what its example scripts take from it:
``FlexibleArgumentParser`` (pagedlm.flexible_args) and ``random_uuid`` (a request id)."""

import uuid

from pagedlm.flexible_args import FlexibleArgumentParser


def random_uuid() -> str:
    """A random 32-digit hex id (uuid4), as vLLM's: scripts name requests with it
    (``engine.generate(prompt, params, random_uuid())``)."""
    return uuid.uuid4().hex


__all__ = ["FlexibleArgumentParser", "random_uuid"]
