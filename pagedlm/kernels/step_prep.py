"""Step preparation on the device: positions, slot mapping, sequence lengths and the step's
block tables computed from the persistent batch's block table, so the host sends only each
scheduled request's row, computed-token count and query start (3 x B integers) instead of
per-token positions and slots and a [B, max_blocks] table.

``prepare_step`` is the PyTorch reference (CPU path, test oracle); ``prepare_step_triton``
the CUDA path with the same signature. Both write into caller-owned views (the step buffers,
fixed addresses a CUDA graph reads).

Sequences at index >= ``num_actual_seqs`` are CUDA-graph padding: their tokens get slot -1
(no KV write) and their context is one token.
"""

from __future__ import annotations

import torch


def prepare_step(
    block_table: torch.Tensor,  # [R, W] int32/int64: the persistent batch's block table
    rows: torch.Tensor,  # [B] int64: each scheduled sequence's row in block_table
    num_computed: torch.Tensor,  # [B] int64: tokens already in the KV cache
    query_start_loc: torch.Tensor,  # [B + 1] int64: cumulative query lengths
    num_actual_seqs: int,
    block_size: int,
    positions: torch.Tensor,  # out [T] int64
    slot_mapping: torch.Tensor,  # out [T] int64
    seq_lens: torch.Tensor,  # out [B] int64/int32
    block_tables: torch.Tensor,  # out [B, W] int64/int32
) -> None:
    num_seqs, num_tokens = rows.shape[0], positions.shape[0]
    counts = query_start_loc[1:] - query_start_loc[:-1]  # [B]
    seq_lens.copy_(num_computed + counts)
    block_tables.copy_(block_table.index_select(0, rows))
    token_seq = torch.repeat_interleave(torch.arange(num_seqs, device=rows.device), counts,
                                        output_size=num_tokens)  # [T]
    pos = num_computed[token_seq] + torch.arange(num_tokens, device=rows.device) - query_start_loc[token_seq]
    positions.copy_(pos)
    blocks = block_tables[token_seq, pos // block_size].to(torch.int64)
    slots = blocks * block_size + pos % block_size
    slot_mapping.copy_(torch.where(token_seq < num_actual_seqs, slots, -1))


def prepare_step_triton(
    block_table: torch.Tensor, rows: torch.Tensor, num_computed: torch.Tensor, query_start_loc: torch.Tensor,
    num_actual_seqs: int, block_size: int, positions: torch.Tensor, slot_mapping: torch.Tensor,
    seq_lens: torch.Tensor, block_tables: torch.Tensor,
) -> None:
    """One program per sequence writes its tokens' positions and slots and its table row."""
    from pagedlm.kernels.triton_step_prep import launch_step_prep  # noqa: PLC0415 - needs Triton

    launch_step_prep(block_table, rows, num_computed, query_start_loc, num_actual_seqs, block_size,
                     positions, slot_mapping, seq_lens, block_tables)
