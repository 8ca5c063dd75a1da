"""vLLM's ``vllm.distributed.parallel_state`` import path (see pagedlm.worker.distributed)."""

from pagedlm.distributed import *  # noqa: F401,F403
from pagedlm.distributed import __all__  # noqa: F401
