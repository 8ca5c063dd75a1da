"""vLLM's ``vllm.v1`` import paths for names scripts use (the engines, the metrics reader).
pagedlm has one engine generation; these modules only point at it."""
