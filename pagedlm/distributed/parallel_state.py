"""vLLM's ``vllm.distributed.parallel_state`` import path (see pagedlm.worker.distributed)."""

from pagedlm.worker.distributed import (  # noqa: F401
    cleanup_dist_env_and_memory,
    destroy_distributed_environment,
    destroy_model_parallel,
    get_pipeline_model_parallel_rank,
    get_pipeline_model_parallel_world_size,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
)
