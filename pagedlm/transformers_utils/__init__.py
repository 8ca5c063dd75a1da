"""vLLM's ``vllm.transformers_utils`` import path (see its ``tokenizer`` module)."""
