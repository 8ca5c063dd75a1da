"""Process-wide parallel state and the collectives the model layers use (vLLM style).

World layout: ``rank = pp_rank * tp_size + tp_rank``. Each pipeline stage holds one
tensor-parallel group of ``tp_size`` consecutive ranks; stage ``s`` sends its hidden states
to the same tp rank of stage ``s + 1``. The rank that returns a step's ``ModelRunnerOutput``
(the "output rank") is tp rank 0 of the last stage.

Without ``init_distributed_environment`` every getter answers as a single rank (0 of 1) and
every collective is the identity, so layers and models work unchanged in one process.

Collectives are ``torch.distributed`` (gloo on CPU, NCCL on CUDA). The NCCL all-reduce is
issued inside the decode CUDA graphs as is: PyTorch's ProcessGroupNCCL is capture-safe
(it skips its watchdog bookkeeping while a graph is being captured), and the recorded
kernel replays against the same communicator, so no custom all-reduce is needed.
"""

from __future__ import annotations

import gc
import logging
from collections import deque
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

# Long enough for a slow start-up on a busy CPU box, short enough that a rank stuck in a
# collective (its peer died) gives up instead of hanging forever.
DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ParallelState:
    rank: int = 0
    world_size: int = 1
    tp_size: int = 1
    pp_size: int = 1
    tp_group: object | None = None  # torch ProcessGroup of this rank's stage
    # vLLM's expert parallelism: the MoE layers' experts split whole over the tensor-parallel
    # group (ep rank = tp rank) instead of each expert split on its intermediate dim.
    enable_expert_parallel: bool = False

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // self.tp_size

    @property
    def output_rank(self) -> int:
        return (self.pp_size - 1) * self.tp_size


_state = ParallelState()


def init_distributed_environment(rank: int, tp_size: int, pp_size: int, init_method: str, backend: str,
                                 timeout_s: float = DEFAULT_TIMEOUT_S, enable_expert_parallel: bool = False) -> None:
    """Join the world and build one tensor-parallel group per pipeline stage. Every rank
    calls new_group for every group, in the same order, as torch.distributed requires."""
    global _state
    world_size = tp_size * pp_size
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    my_group = None
    for stage in range(pp_size):
        ranks = list(range(stage * tp_size, (stage + 1) * tp_size))
        group = dist.new_group(ranks, backend=backend, timeout=timedelta(seconds=timeout_s))
        if rank in ranks:
            my_group = group
    _state = ParallelState(rank, world_size, tp_size, pp_size, my_group, enable_expert_parallel)


def set_parallel_state_for_tests(rank: int, tp_size: int, pp_size: int, enable_expert_parallel: bool = False) -> None:
    """Pretend to be ``rank`` without a process group: layer shapes only (no collectives)."""
    global _state
    _state = ParallelState(rank, tp_size * pp_size, tp_size, pp_size, None, enable_expert_parallel)


def destroy_distributed_environment() -> None:
    global _state
    _pending_sends.clear()  # a peer that is gone will never receive them
    if dist.is_initialized():
        dist.destroy_process_group()
    _state = ParallelState()


def destroy_model_parallel() -> None:
    """vLLM's: drop this rank's tensor-parallel group (the world stays until
    destroy_distributed_environment); afterwards the getters answer as a single rank."""
    global _state
    if _state.tp_group is not None and dist.is_initialized():
        dist.destroy_process_group(_state.tp_group)
    _state = ParallelState()


def cleanup_dist_env_and_memory(shutdown_ray: bool = False) -> None:
    """vLLM's clean-up between two engines in one script: the parallel groups and the world
    go, Ray too if asked, then garbage and the CUDA caching allocator's free blocks (only where
    this process has used CUDA: clean-up never creates a CUDA context)."""
    destroy_model_parallel()
    destroy_distributed_environment()
    if shutdown_ray:
        try:
            import ray
        except ImportError:  # without Ray installed, nothing here started it
            pass
        else:
            ray.shutdown()
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def get_parallel_state() -> ParallelState:
    return _state


def get_tensor_model_parallel_rank() -> int:
    return _state.tp_rank


def get_tensor_model_parallel_world_size() -> int:
    return _state.tp_size


def get_expert_parallel_rank_size() -> tuple[int, int]:
    """(ep_rank, ep_size) of the MoE layers: the tensor-parallel rank and size with expert
    parallelism on (vLLM's EP group at data_parallel_size 1), (0, 1) otherwise."""
    if not _state.enable_expert_parallel:
        return 0, 1
    return _state.tp_rank, _state.tp_size


def get_pipeline_model_parallel_rank() -> int:
    return _state.pp_rank


def get_pipeline_model_parallel_world_size() -> int:
    return _state.pp_size


def is_first_pp_rank() -> bool:
    return _state.pp_rank == 0


def is_last_pp_rank() -> bool:
    return _state.pp_rank == _state.pp_size - 1


def is_output_rank() -> bool:
    return _state.rank == _state.output_rank


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over the tensor-parallel group, in place; the identity at tp=1."""
    if _state.tp_size == 1:
        return x
    dist.all_reduce(x, group=_state.tp_group)
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every tp rank's ``x`` along ``dim`` (in rank order), on every rank."""
    if _state.tp_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(_state.tp_size)]
    dist.all_gather(parts, x, group=_state.tp_group)
    return torch.cat(parts, dim=dim)


def time_collectives(hidden_size: int, gather_size: int, num_all_reduces: int, dtype: torch.dtype,
                     device: torch.device, iters: int = 30) -> float:
    """Median milliseconds of one batch-1 decode step's tensor-parallel collectives: ``num_all_reduces``
    all-reduces of one ``[1, hidden_size]`` row and one all-gather of ``[1, gather_size]``
    logits (none if 0), through the same functions the layers call. On CUDA they are captured in one graph
    and replayed, as the decode graphs run them; on CPU (gloo) they run eagerly. Every rank of
    the group must call it at once (benchmarks: ``collective_rpc("time_step_collectives")``)."""
    import time

    hidden = torch.randn(1, hidden_size, dtype=dtype, device=device)
    logits = torch.randn(1, max(gather_size, 1), dtype=dtype, device=device)

    def step() -> None:
        for _ in range(num_all_reduces):
            tensor_model_parallel_all_reduce(hidden)
        if gather_size:
            tensor_model_parallel_all_gather(logits)

    step()  # communicators are set up outside any capture
    run = step
    if device.type == "cuda":
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        run = graph.replay
        run()
    times = []
    for _ in range(iters):
        dist.barrier(group=_state.tp_group)  # start together: time the collectives, not a late peer
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


# Sends posted by pp_send, per call, oldest first: (work, tensor kept alive until sent).
_pending_sends: deque[list[tuple[object, torch.Tensor]]] = deque()


def pp_send(tensors: list[torch.Tensor]) -> None:
    """Send to the same tp rank of the next stage without waiting for it to receive
    (gloo's send waits for the receiver), so this stage can start its next batch while the
    next stage still computes the last one. With at most pp_size batches in flight, the
    sends of pp_size calls ago were received before this batch was launched: waiting on
    them here keeps the list bounded and never blocks."""
    while len(_pending_sends) >= _state.pp_size:
        for work, _ in _pending_sends.popleft():
            work.wait()
    dst = _state.rank + _state.tp_size
    posted = []
    for t in tensors:
        t = t.contiguous()
        posted.append((dist.isend(t, dst), t))
    _pending_sends.append(posted)


def pp_recv(shapes: list[tuple[int, ...]], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Receive from the same tp rank of the previous stage, in pp_send's order."""
    src = _state.rank - _state.tp_size
    out = []
    for shape in shapes:
        t = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(t, src)
        out.append(t)
    return out


def broadcast_from_output_rank(x: torch.Tensor) -> torch.Tensor:
    """Give every rank the output rank's ``x`` (same shape and dtype everywhere), in place.
    Sampled token ids travel this way, so each rank's copy of a request stays identical."""
    if _state.world_size > 1:
        dist.broadcast(x, _state.output_rank)
    return x


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        from pagedlm.config import ConfigError

        raise ConfigError(f"{what} ({numerator}) is not divisible by tensor_parallel_size ({denominator})")
    return numerator // denominator


def kv_head_shard(num_kv_heads: int, tp_size: int, tp_rank: int) -> tuple[int, int]:
    """(local KV heads, index of this rank's KV shard). With more ranks than KV heads each
    head is replicated on ``tp_size / num_kv_heads`` consecutive ranks."""
    if tp_size >= num_kv_heads:
        if tp_size % num_kv_heads:
            from pagedlm.config import ConfigError

            raise ConfigError(f"tensor_parallel_size ({tp_size}) must be a multiple of num_key_value_heads "
                              f"({num_kv_heads}) when it is larger")
        return 1, tp_rank // (tp_size // num_kv_heads)
    return divide(num_kv_heads, tp_size, "num_key_value_heads"), tp_rank


def local_attention_heads(num_heads: int, num_kv_heads: int) -> tuple[int, int]:
    """This rank's (query heads, KV heads)."""
    tp = _state.tp_size
    return divide(num_heads, tp, "num_attention_heads"), kv_head_shard(num_kv_heads, tp, _state.tp_rank)[0]


def pp_layer_range(num_layers: int, pp_rank: int | None = None, pp_size: int | None = None) -> tuple[int, int]:
    """[start, end) of the contiguous layers stage ``pp_rank`` holds; earlier stages take
    one extra layer each when the split is uneven."""
    pp_rank = _state.pp_rank if pp_rank is None else pp_rank
    pp_size = _state.pp_size if pp_size is None else pp_size
    base, extra = divmod(num_layers, pp_size)
    start = pp_rank * base + min(pp_rank, extra)
    return start, start + base + (1 if pp_rank < extra else 0)
