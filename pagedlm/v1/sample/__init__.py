"""vLLM's ``vllm.v1.sample`` import path: the custom logits processor interface lives in
``pagedlm.v1.sample.logits_processor``."""
