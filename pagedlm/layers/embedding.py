"""Vocab-parallel token embedding and LM head (Megatron style).

The vocabulary is cut into ``tp_size`` equal contiguous shards (the last one padded with
zero rows). The embedding looks up the ids in this rank's shard, zeroes the others, and one
all-reduce sums the shards; the LM head computes this shard's logits and an all-gather
gives every rank the full row, so sampling sees identical logits on every rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pagedlm.kernels.gemv import unquantized_linear
from pagedlm.layers.linear import default_weight_loader
from pagedlm.worker.distributed import (
    get_tensor_model_parallel_rank,
    get_tensor_model_parallel_world_size,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)


class VocabParallelEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.tp_rank = get_tensor_model_parallel_rank()
        self.tp_size = get_tensor_model_parallel_world_size()
        self.num_per_partition = -(-vocab_size // self.tp_size)
        self.vocab_start = self.tp_rank * self.num_per_partition
        self.vocab_end = min(self.vocab_start + self.num_per_partition, vocab_size)
        self.weight = nn.Parameter(torch.empty(self.num_per_partition, hidden_size), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id=None) -> None:
        if self.tp_size == 1:
            return default_weight_loader(param, loaded_weight)
        if loaded_weight.shape[0] != self.vocab_size:
            raise ValueError(f"checkpoint embedding has {loaded_weight.shape[0]} rows, expected {self.vocab_size}")
        num = self.vocab_end - self.vocab_start
        param.data.zero_()  # padding rows of the last shard stay zero
        default_weight_loader(param.data.narrow(0, 0, num), loaded_weight.narrow(0, self.vocab_start, num))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        in_shard = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local_ids = (input_ids - self.vocab_start) * in_shard
        out = F.embedding(local_ids, self.weight) * in_shard.unsqueeze(-1).to(self.weight.dtype)
        return tensor_model_parallel_all_reduce(out)


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection to vocabulary logits; may share its weight with the embedding
    (both are sharded the same way)."""

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = unquantized_linear(hidden_states, self.weight)  # [S, V / tp]; decode rows: the GEMV where it wins
        if self.tp_size == 1:
            return logits
        return tensor_model_parallel_all_gather(logits, dim=-1)[:, : self.vocab_size]


# The names the model files used before tensor parallelism.
VocabEmbedding = VocabParallelEmbedding
LMHead = ParallelLMHead
