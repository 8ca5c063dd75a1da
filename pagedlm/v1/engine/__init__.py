"""vLLM's ``vllm.v1.engine`` import path (see pagedlm.engine)."""
