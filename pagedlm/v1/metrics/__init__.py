"""vLLM's ``vllm.v1.metrics`` import path (see pagedlm.metrics and pagedlm.metrics_reader)."""
