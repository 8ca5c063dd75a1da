from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Where this step's tokens go in the KV cache and what each sequence attends to."""

    slot_mapping: torch.Tensor  # [T] int64: block_id * block_size + offset, -1 for padding
    query_start_loc: torch.Tensor  # [B + 1] int32
    seq_lens: torch.Tensor  # [B] int32, context length after this step
    block_tables: torch.Tensor  # [B, max_blocks] int32
    max_query_len: int
    max_seq_len: int
    num_actual_tokens: int  # tokens before any padding (CUDA graphs pad the batch)
