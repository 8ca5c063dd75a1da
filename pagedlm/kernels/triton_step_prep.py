"""Triton step preparation (see pagedlm.kernels.step_prep for the contract and reference)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue


@triton.jit
def _step_prep_kernel(
    block_table_ptr, stride_bt, rows_ptr, num_computed_ptr, qsl_ptr,
    positions_ptr, slots_ptr, seq_lens_ptr, tables_ptr, stride_tables,
    num_actual_seqs, width, block_size,
    BLOCK: tl.constexpr, WIDTH_BLOCK: tl.constexpr, PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    seq = tl.program_id(0)
    row = tl.load(rows_ptr + seq).to(tl.int64)
    start = tl.load(qsl_ptr + seq).to(tl.int64)
    count = tl.load(qsl_ptr + seq + 1).to(tl.int64) - start
    ctx = tl.load(num_computed_ptr + seq).to(tl.int64)
    tl.store(seq_lens_ptr + seq, (ctx + count).to(seq_lens_ptr.dtype.element_ty))
    src = block_table_ptr + row * stride_bt
    dst = tables_ptr + seq.to(tl.int64) * stride_tables
    for w in range(0, width, WIDTH_BLOCK):  # this sequence's row of the step's block tables
        cols = w + tl.arange(0, WIDTH_BLOCK)
        ids = tl.load(src + cols, mask=cols < width, other=0)
        tl.store(dst + cols, ids.to(tables_ptr.dtype.element_ty), mask=cols < width)
    # Padding sequences (index >= num_actual_seqs) write no KV: slot -1 for all their tokens.
    num_real = count * (seq < num_actual_seqs).to(tl.int64)
    for off in range(0, count, BLOCK):
        i = off + tl.arange(0, BLOCK)
        mask = i < count
        real = i < num_real
        pos = ctx + i
        block = tl.load(src + pos // block_size, mask=real, other=0).to(tl.int64)
        slot = tl.where(real, block * block_size + pos % block_size, -1)
        tl.store(positions_ptr + start + i, pos.to(positions_ptr.dtype.element_ty), mask=mask)
        tl.store(slots_ptr + start + i, slot.to(slots_ptr.dtype.element_ty), mask=mask)


def launch_step_prep(
    block_table: torch.Tensor, rows: torch.Tensor, num_computed: torch.Tensor, query_start_loc: torch.Tensor,
    num_actual_seqs: int, block_size: int, positions: torch.Tensor, slot_mapping: torch.Tensor,
    seq_lens: torch.Tensor, block_tables: torch.Tensor,
) -> None:
    num_seqs = rows.shape[0]
    if num_seqs == 0:
        return
    if block_table.stride(1) != 1 or block_tables.stride(1) != 1:
        raise ValueError("block tables must have unit stride along their width")
    width = block_tables.shape[1]
    _step_prep_kernel[(num_seqs,)](
        block_table, block_table.stride(0), rows, num_computed, query_start_loc,
        positions, slot_mapping, seq_lens, block_tables, block_tables.stride(0),
        num_actual_seqs, width, block_size,
        BLOCK=128, WIDTH_BLOCK=min(triton.next_power_of_2(max(width, 1)), 1024), **launch_kwargs(),
    )
