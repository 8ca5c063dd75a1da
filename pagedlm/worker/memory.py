"""How many KV cache blocks fit: from free memory on CPU, from a profiled forward on GPU."""

from __future__ import annotations

import logging
import math
import mmap
import os
from typing import Callable

import torch

from pagedlm.attention.kv_cache_dtype import kv_cache_torch_dtype
from pagedlm.config import ConfigError, EngineConfig, attention_shape
from pagedlm.worker.distributed import local_attention_heads, pp_layer_range

logger = logging.getLogger(__name__)

_CPU_KV_CACHE_MAX_BYTES = 4 << 30


def zeroed_kv_cache(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A KV cache tensor of zeros. On CPU its memory is an anonymous mapping, whose pages the
    OS supplies zeroed when they are first written: start-up does not fill gigabytes that
    ``torch.zeros`` would (the default 4 GiB cache took 5.6 s of a 2-core host), and the
    process holds only the pages of blocks in use. Elsewhere ``torch.zeros``."""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if nbytes == 0:
        return torch.zeros(shape, dtype=dtype)
    pages = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    # The tensor keeps the mapping alive; it is unmapped when the last view is freed.
    return torch.frombuffer(pages, dtype=torch.uint8, count=nbytes).view(dtype).view(shape)


def kv_cache_dtype(config: EngineConfig) -> torch.dtype:
    """The KV cache tensors' element type (--kv-cache-dtype; auto = the model dtype)."""
    return kv_cache_torch_dtype(config.cache_config.cache_dtype, config.model_config.torch_dtype)


def kv_cache_bytes_per_block(config: EngineConfig) -> int:
    """Bytes of one block on this rank: its pipeline stage's layers, its tensor-parallel
    share of the KV heads."""
    hf = config.model_config.hf_config
    num_heads, num_kv_heads, head_dim = attention_shape(hf)
    _, local_kv_heads = local_attention_heads(num_heads, num_kv_heads)
    start, end = pp_layer_range(hf.num_hidden_layers)
    dtype_size = torch.empty((), dtype=kv_cache_dtype(config)).element_size()  # fp8: half of bf16
    return 2 * (end - start) * config.cache_config.block_size * local_kv_heads * head_dim * dtype_size


def _available_host_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 << 30


def cpu_num_blocks(config: EngineConfig) -> int:
    """kv_cache_memory_bytes, else a quarter of free host memory (at most 4 GiB); never more
    blocks than max_num_seqs full-length sequences could use."""
    per_block = kv_cache_bytes_per_block(config)
    budget = config.cache_config.kv_cache_memory_bytes
    if budget is None:
        budget = min(_CPU_KV_CACHE_MAX_BYTES, _available_host_memory() // 4)
    if budget < per_block:
        raise ConfigError(f"kv_cache_memory_bytes={budget} is smaller than one KV block ({per_block} bytes)")
    bs = config.cache_config.block_size
    useful = config.scheduler_config.max_num_seqs * -(-config.scheduler_config.max_model_len // bs)
    return max(1, min(budget // per_block, useful))


def no_kv_num_blocks(config: EngineConfig) -> int:
    """Encoder-only models keep no KV cache: blocks are scheduler bookkeeping without memory
    behind them, enough for max_num_seqs full-length prompts."""
    bs = config.cache_config.block_size
    return config.scheduler_config.max_num_seqs * -(-config.scheduler_config.max_model_len // bs)


ALLOC_CONF_ENV_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def use_expandable_segments(device: torch.device) -> bool:
    """Let torch's CUDA allocator grow and shrink its segments in place (``expandable_segments``)
    unless the user configured the allocator. The engine never empties the allocator's cache,
    so with fixed segments the blocks cached for one kind of step (a 16k-token prefill) do not
    serve another (1,024 rows of sampling) and the card fills beyond what the start-up profile
    allowed: 0.947 of an H200 at gpu_memory_utilization 0.9 in BENCHMARKS.md's run, 0.900 with
    expandable segments. Returns whether it set them."""
    if device.type != "cuda" or any(os.environ.get(v) for v in ALLOC_CONF_ENV_VARS):
        return False
    set_allocator_settings("expandable_segments:True")
    return True


def set_allocator_settings(settings: str) -> None:
    """The allocator's settings (PYTORCH_CUDA_ALLOC_CONF's syntax) for the rest of the process:
    torch's accelerator call where it has one (torch 2.10+; the CUDA one warns there)."""
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    (setter or torch.cuda.memory._set_allocator_settings)(settings)


GRAPH_MEMORY_ENV_VARS = ("PAGEDLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS", "VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS")


def estimate_graph_memory() -> bool:
    """Whether the KV cache budget leaves room for the CUDA graphs (on unless one of
    GRAPH_MEMORY_ENV_VARS is 0, as in vLLM since its v0.21)."""
    values = [os.environ[v] for v in GRAPH_MEMORY_ENV_VARS if os.environ.get(v, "") != ""]
    for value in values:
        if value not in ("0", "1"):
            raise ConfigError(f"{'/'.join(GRAPH_MEMORY_ENV_VARS)} must be 0 or 1, not {value!r}")
    return "0" not in values


def gpu_num_blocks(config: EngineConfig, profile_run: Callable[[], int],
                   graph_memory: Callable[[], int] = lambda: 0) -> int:
    """Run the worst-case forward, then give the KV cache what gpu_memory_utilization leaves
    after it and after the CUDA graphs.

    profile_run returns the bytes of the scratch KV cache it held while it ran (freed when it
    returns): the real cache takes that memory's place, so it is not counted as activations.
    graph_memory returns the bytes the CUDA graphs captured after the KV cache will hold."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    free_before, total = torch.cuda.mem_get_info()
    used_before = total - free_before
    scratch_kv = profile_run()
    torch.cuda.synchronize()
    peak_activation = max(0, torch.cuda.max_memory_allocated() - torch.cuda.memory_allocated() - scratch_kv)
    torch.cuda.empty_cache()
    free_after, _ = torch.cuda.mem_get_info()
    used_now = total - free_after
    if config.cache_config.kv_cache_memory_bytes is not None:  # the user sized it: no guessing
        graphs, budget = 0, config.cache_config.kv_cache_memory_bytes
    else:
        graphs = graph_memory()
        budget = total * config.cache_config.gpu_memory_utilization - used_now - peak_activation - graphs
    per_block = kv_cache_bytes_per_block(config)
    num_blocks = int(budget // per_block)
    logger.info(
        "GPU memory: total %.2f GiB, in use %.2f GiB (before profiling %.2f), peak activations %.2f GiB, "
        "CUDA graphs %.2f GiB, KV cache budget %.2f GiB", total / 2**30, used_now / 2**30, used_before / 2**30,
        peak_activation / 2**30, graphs / 2**30, max(budget, 0) / 2**30,
    )
    if num_blocks < 1:
        raise ConfigError(
            "No memory left for the KV cache after loading the model; raise gpu_memory_utilization "
            f"(now {config.cache_config.gpu_memory_utilization}) or lower max_num_batched_tokens."
        )
    return num_blocks


def check_max_model_len_fits(config: EngineConfig, num_blocks: int) -> None:
    bs = config.cache_config.block_size
    needed = -(-config.scheduler_config.max_model_len // bs)
    if needed > num_blocks:
        raise ConfigError(
            f"The KV cache holds {num_blocks} blocks of {bs} tokens ({num_blocks * bs} tokens), fewer than one "
            f"sequence of max_model_len={config.scheduler_config.max_model_len} needs. Set max_model_len to at most "
            f"{num_blocks * bs}, or give the cache more memory (gpu_memory_utilization / num_gpu_blocks_override)."
        )
