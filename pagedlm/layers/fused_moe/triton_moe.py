"""Fused MoE in Triton (CUDA): same signatures as ``reference``.

The (token, slot) pairs are sorted by expert and each expert's run is padded to a multiple
of BLOCK_M (``align_by_expert``, static shapes, no host sync), so every BLOCK_M-row tile of
the sorted list belongs to one expert. Then one grouped GEMM per projection:
  1. gate_up[n] = x[token(n)] @ w13[e]^T       for every sorted row n           [N, 2I]
  2. silu(gate) * up                           (the silu_and_mul kernel)        [N, I]
  3. y[n] = weight(n) * act[n] @ w2[e]^T       routed weight applied in the GEMM [N, H]
and the top-k rows of each token are summed. N = T * K; padding rows are never loaded or
stored (their sorted id is N).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedlm.kernels.triton_activation import silu_and_mul
from pagedlm.layers.fused_moe.reference import apply_activation, select_experts  # a few tiny torch ops
from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue

__all__ = ["MoEConfig", "align_by_expert", "default_config", "fused_experts", "select_experts"]


@dataclass(frozen=True, slots=True)
class MoEConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3


def default_config(num_tokens: int, top_k: int, num_experts: int) -> MoEConfig:
    """Small row tiles when each expert sees few rows (decode), larger ones for prefill."""
    rows_per_expert = num_tokens * top_k / max(num_experts, 1)
    if rows_per_expert <= 16:
        return MoEConfig(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4)
    if rows_per_expert <= 64:
        return MoEConfig(block_m=32, block_n=64, block_k=64, num_warps=4, num_stages=4)
    return MoEConfig(block_m=64, block_n=128, block_k=64, num_warps=8, num_stages=3)


def align_by_expert(topk_ids: torch.Tensor, num_experts: int, block_m: int, skip_negative_ids: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (sorted_ids [P] int32: (token * K + slot) grouped by expert, each group padded to
    block_m with the value N; expert_ids [P / block_m] int32: the expert of each tile, -1
    past the end; num_padded [1] int32). P = N + E * (block_m - 1) rounded up to block_m,
    the most padding can need, so shapes depend only on (T, K, E, block_m).
    ``skip_negative_ids`` (expert parallelism): negative ids (other ranks' experts) form one
    more group after the last expert, past ``num_padded``, so no tile computes them."""
    flat = topk_ids.reshape(-1).long()
    n = flat.numel()
    device = flat.device
    groups = num_experts + 1 if skip_negative_ids else num_experts
    if skip_negative_ids:
        flat = torch.where(flat < 0, num_experts, flat)
    counts = torch.zeros(groups, dtype=torch.long, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # no bincount: it syncs on CUDA
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    order = torch.argsort(flat, stable=True)
    sorted_experts = flat[order]
    # rank of each sorted row within its expert's run
    count_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n, device=device) - count_start[sorted_experts]
    max_padded = triton.cdiv(n + groups * (block_m - 1), block_m) * block_m
    sorted_ids = torch.full((max_padded,), n, dtype=torch.int32, device=device)
    sorted_ids[padded_start[sorted_experts] + rank] = order.to(torch.int32)
    tile_start = torch.arange(0, max_padded, block_m, device=device)
    expert_ids = torch.searchsorted(padded_end, tile_start, right=True)
    expert_ids = torch.where(expert_ids < num_experts, expert_ids, -1).to(torch.int32)
    num_padded = padded_end[num_experts - 1 : num_experts].to(torch.int32)  # the real experts' tiles
    return sorted_ids, expert_ids, num_padded


@triton.jit
def _grouped_gemm_kernel(
    a_ptr, b_ptr, c_ptr, weights_ptr, sorted_ids_ptr, expert_ids_ptr, num_padded_ptr,
    num_rows, n_size, k_size,
    stride_am, stride_be, stride_bn, stride_bk, stride_cm,
    A_ROWS_PER_TOKEN: tl.constexpr, MUL_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """c[row] = (weight[row] *) a[row // A_ROWS_PER_TOKEN] @ b[expert]^T for the sorted
    rows of one BLOCK_M tile (one expert) and one BLOCK_N slice of the output."""
    pdl_prologue(PDL)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    num_padded = tl.load(num_padded_ptr)
    if pid_m * BLOCK_M >= num_padded:
        return
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.load(sorted_ids_ptr + offs_m)
    row_valid = rows < num_rows
    a_rows = (rows // A_ROWS_PER_TOKEN).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_valid = offs_n < n_size
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + expert * stride_be + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None] * stride_bk
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, k_size, BLOCK_K):
        k_valid = offs_k + k0 < k_size
        a = tl.load(a_ptrs, mask=row_valid[:, None] & k_valid[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_valid[:, None] & n_valid[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk
    if MUL_WEIGHT:
        w = tl.load(weights_ptr + rows, mask=row_valid, other=0.0)
        acc = acc * w[:, None]
    c_ptrs = c_ptr + rows[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_valid[:, None] & n_valid[None, :])


def _grouped_gemm(a, b, c, weights, aligned, top_k_rows: int, mul_weight: bool, config: MoEConfig) -> None:
    sorted_ids, expert_ids, num_padded = aligned
    num_rows = c.shape[0]
    n_size, k_size = b.shape[1], b.shape[2]
    grid = (expert_ids.shape[0], triton.cdiv(n_size, config.block_n))
    _grouped_gemm_kernel[grid](
        a, b, c, weights, sorted_ids, expert_ids, num_padded,
        num_rows, n_size, k_size,
        a.stride(0), b.stride(0), b.stride(1), b.stride(2), c.stride(0),
        A_ROWS_PER_TOKEN=top_k_rows, MUL_WEIGHT=mul_weight,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        # float32 models get full-precision products (no tf32), as the reference computes
        DOT_PRECISION="ieee" if a.dtype == torch.float32 else "tf32",
        num_warps=config.num_warps, num_stages=config.num_stages, **launch_kwargs(),
    )


def fused_experts(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, K] float32
    topk_ids: torch.Tensor,  # [T, K] int
    config: MoEConfig | None = None,
    w13_bias: torch.Tensor | None = None,  # [E, 2I]
    w2_bias: torch.Tensor | None = None,  # [E, H]
    activation: str = "silu",
    swiglu_alpha: float = 1.702,
    swiglu_limit: float = 7.0,
    skip_negative_ids: bool = False,
) -> torch.Tensor:
    """Same contract as ``reference.fused_experts``; never syncs with the host. The biases
    (gpt-oss) are added to the GEMMs' rows by each row's expert, and activations other than
    silu run as torch ops (``reference.apply_activation``). With ``skip_negative_ids`` the
    rows of negative ids are never computed (left unwritten) and zeroed in the final sum."""
    num_tokens, hidden = hidden_states.shape
    top_k = topk_ids.shape[1]
    num_experts, two_i, _ = w13.shape
    if hidden_states.stride(1) != 1 or w13.stride(2) != 1 or w2.stride(2) != 1:
        raise ValueError("fused_experts needs unit stride along the reduction dims")
    config = config or default_config(num_tokens, top_k, num_experts)
    if num_tokens == 0:
        return torch.zeros_like(hidden_states)
    aligned = align_by_expert(topk_ids, num_experts, config.block_m, skip_negative_ids)
    n = num_tokens * top_k
    gate_up = torch.empty(n, two_i, dtype=hidden_states.dtype, device=hidden_states.device)
    weights = topk_weights.reshape(-1).float().contiguous()
    _grouped_gemm(hidden_states, w13, gate_up, weights, aligned, top_k, False, config)
    row_experts = None  # the expert of row n = token * K + slot, for the biases
    if w13_bias is not None or w2_bias is not None:
        row_experts = topk_ids.reshape(-1).long().clamp(min=0)  # skipped rows: any valid index
    if w13_bias is not None:
        gate_up += w13_bias.index_select(0, row_experts).to(gate_up.dtype)
    if activation == "silu":
        act = silu_and_mul(gate_up)
    else:
        act = apply_activation(gate_up, activation, swiglu_alpha, swiglu_limit).contiguous()
    out = torch.empty(n, hidden, dtype=hidden_states.dtype, device=hidden_states.device)
    _grouped_gemm(act, w2, out, weights, aligned, 1, True, config)  # routed weight applied in the GEMM
    # Sum each token's K weighted rows in float32 (with their weighted down_proj biases).
    rows = out.view(num_tokens, top_k, hidden).float()
    if w2_bias is not None:
        rows = rows + (w2_bias.index_select(0, row_experts).float() * weights.unsqueeze(1)).view(rows.shape)
    if skip_negative_ids:  # unwritten rows (other ranks' experts) hold garbage: where, not a product
        rows = torch.where((topk_ids >= 0).unsqueeze(-1), rows, 0.0)
    return rows.sum(dim=1).to(hidden_states.dtype)
