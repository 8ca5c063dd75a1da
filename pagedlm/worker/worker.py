"""Worker: one rank of the world. Owns its device, joins the process groups, and drives a
ModelRunner; the same class runs in process (one rank), in a worker process, or in a Ray
actor. Only the output rank returns ModelRunnerOutputs."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from pagedlm.config import EngineConfig
from pagedlm.engine.messages import ModelRunnerOutput, SchedulerOutput
from pagedlm.worker.distributed import (
    get_parallel_state,
    init_distributed_environment,
    is_first_pp_rank,
    is_last_pp_rank,
    is_output_rank,
    local_attention_heads,
    pp_layer_range,
    time_collectives,
)

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, config: EngineConfig, rank: int = 0, local_rank: int = 0,
                 distributed_init_method: str | None = None) -> None:
        self.config = config
        self.rank = rank
        self.local_rank = local_rank
        self.distributed_init_method = distributed_init_method
        self.runner = None

    def init_device(self) -> None:
        parallel = self.config.parallel_config
        world_size = parallel.tensor_parallel_size * parallel.pipeline_parallel_size
        on_cuda = self.config.device_config.device == "cuda"
        if on_cuda:
            torch.cuda.set_device(self.local_rank)
        elif world_size > 1:
            # Ranks on one host share its cores; more threads than cores only thrash.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
        if world_size > 1:
            if self.distributed_init_method is None:
                raise ValueError("a multi-rank worker needs a distributed_init_method")
            init_distributed_environment(self.rank, parallel.tensor_parallel_size, parallel.pipeline_parallel_size,
                                         self.distributed_init_method, "nccl" if on_cuda else "gloo",
                                         enable_expert_parallel=parallel.enable_expert_parallel)

    def load_model(self) -> None:
        from pagedlm.worker.model_runner import ModelRunner

        self.runner = ModelRunner(self.config)

    def determine_num_blocks(self) -> int:
        return self.runner.determine_num_blocks()

    def initialize_kv_cache(self, num_blocks: int) -> None:
        self.runner.initialize_kv_cache(num_blocks)

    def warm_up(self) -> None:
        self.runner.warm_up()

    def ready(self) -> None:
        self.runner.ready()

    def sleep(self, level: int = 1) -> None:
        self.runner.sleep(level)
        if self.config.device_config.device == "cuda":
            free, total = torch.cuda.mem_get_info()
            logger.info("Asleep: %.2f GiB of %.2f GiB free on the device", free / 2**30, total / 2**30)

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.runner.wake_up(tags)

    def reload_weights(self) -> None:
        self.runner.reload_weights()

    def describe(self) -> str:
        """One line of the world layout, for the start-up log."""
        hf = self.config.model_config.hf_config
        state = get_parallel_state()
        start, end = pp_layer_range(hf.num_hidden_layers)
        from pagedlm.config import attention_shape

        num_heads, num_kv_heads, _ = attention_shape(hf)
        heads, kv_heads = local_attention_heads(num_heads, num_kv_heads)
        device = f"cuda:{self.local_rank}" if self.config.device_config.device == "cuda" else "cpu"
        return (f"rank {state.rank}/{state.world_size} (tp {state.tp_rank}/{state.tp_size}, pp {state.pp_rank}/"
                f"{state.pp_size}) pid {os.getpid()} on {device}: layers [{start}, {end}), {heads} query heads, "
                f"{kv_heads} KV heads, {self.runner.num_blocks} KV blocks")

    def runtime_stats(self) -> dict:
        """This rank's weight bytes, the bytes a decode step reads (all but an untied input
        embedding table, of which it reads one row per token), and how many forwards ran as
        graph replays or eagerly."""
        params = dict(self.runner.model.named_parameters())  # a tied LM head appears once
        weight_bytes = sum(p.numel() * p.element_size() for p in params.values())
        tied = getattr(self.config.model_config.hf_config, "tie_word_embeddings", False)
        embedding = 0 if tied else sum(p.numel() * p.element_size() for n, p in params.items() if "embed_tokens" in n)
        return {"rank": get_parallel_state().rank, "weight_bytes": weight_bytes,
                "decode_read_bytes": weight_bytes - embedding, "forward_counts": dict(self.runner.forward_counts)}

    def expert_layout(self) -> dict[str, dict]:
        """Each MoE layer's experts on this rank: the global ids it holds (all of them without
        expert parallelism) and its stacked weights' shapes."""
        from pagedlm.layers.fused_moe import FusedMoE  # noqa: PLC0415

        layout = {}
        for name, module in self.runner.model.named_modules():
            if isinstance(module, FusedMoE):
                held = [e for e in range(module.num_experts) if module.local_expert(e) is not None]
                layout[name] = {"experts": held, "w13": list(module.w13_weight.shape),
                                "w2": list(module.w2_weight.shape)}
        return layout

    def time_step_collectives(self) -> float:
        """Milliseconds of this stage's collectives in one batch-1 decode step (time_collectives):
        two all-reduces per layer, the embedding's on the first stage, the LM head's all-gather
        on the last. 0 at tp=1."""
        if get_parallel_state().tp_size == 1:
            return 0.0
        hf = self.config.model_config.hf_config
        start, end = pp_layer_range(hf.num_hidden_layers)
        tp = get_parallel_state().tp_size
        gather = -(-self.runner.vocab_size // tp) if is_last_pp_rank() else 0
        return time_collectives(hf.hidden_size, gather, 2 * (end - start) + int(is_first_pp_rank()),
                                self.config.model_config.torch_dtype, self.runner.device)

    def execute_model(self, sched: SchedulerOutput) -> ModelRunnerOutput | None:
        output = self.runner.execute_model(sched)
        return output if is_output_rank() else None

    def launch(self, sched: SchedulerOutput) -> None:
        self.runner.launch(sched)

    def take_output(self) -> ModelRunnerOutput | None:
        output = self.runner.take_output()
        return output if is_output_rank() else None

    def sample_deferred(self, bitmask: np.ndarray) -> None:
        self.runner.sample_deferred(bitmask)
