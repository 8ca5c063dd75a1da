"""PyTorch reference of the MoE ops: the CPU path and the oracle of the Triton kernel
(``triton_moe``), which keeps the same signatures.

Shapes: T tokens, H hidden, E experts, I intermediate (per tensor-parallel rank), K top-k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def select_experts(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over experts (float32), the top-k, optionally renormalised to sum to 1
    (Mixtral always; Qwen MoE when ``norm_topk_prob``). -> (weights [T, K] float32, ids [T, K] int64)."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids


def fused_experts(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]: gate rows then up rows
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, K] float32
    topk_ids: torch.Tensor,  # [T, K] int
) -> torch.Tensor:
    """sum_k weight_k * w2[e_k] @ (silu(gate_e_k x) * up_e_k x), one expert at a time over the
    tokens routed to it. -> [T, H] in the input dtype (accumulated in float32)."""
    num_experts = w13.shape[0]
    out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)
    flat_ids = topk_ids.reshape(-1)
    # Expert of each (token, slot), grouped: one sort instead of a mask per expert.
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=num_experts).tolist()
    top_k = topk_ids.shape[1]
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        slots = order[start : start + count]
        start += count
        tokens = slots // top_k
        x = hidden_states.index_select(0, tokens)
        gate, up = F.linear(x, w13[expert]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, w2[expert])
        out.index_add_(0, tokens, y.float() * topk_weights.reshape(-1)[slots].unsqueeze(1))
    return out.to(hidden_states.dtype)
