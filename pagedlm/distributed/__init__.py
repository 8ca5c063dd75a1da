"""vLLM's ``vllm.distributed`` import path: the clean-up helpers scripts call between two
engines, and the tensor-parallel getters and collectives. They live in
pagedlm.worker.distributed; this package only names them where vLLM code looks."""

from pagedlm.worker.distributed import (
    cleanup_dist_env_and_memory,
    destroy_distributed_environment,
    destroy_model_parallel,
    get_pipeline_model_parallel_rank,
    get_pipeline_model_parallel_world_size,
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)

__all__ = [
    "cleanup_dist_env_and_memory",
    "destroy_distributed_environment",
    "destroy_model_parallel",
    "get_pipeline_model_parallel_rank",
    "get_pipeline_model_parallel_world_size",
    "get_tensor_model_parallel_rank",
    "get_tensor_model_parallel_world_size",
    "tensor_model_parallel_all_gather",
    "tensor_model_parallel_all_reduce",
]
