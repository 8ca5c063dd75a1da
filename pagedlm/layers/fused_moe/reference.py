"""PyTorch reference of the MoE ops: the CPU path and the oracle of the Triton kernel
(``triton_moe``), which keeps the same signatures.

Shapes: T tokens, H hidden, E experts, I intermediate (per tensor-parallel rank), K top-k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def select_experts(
    router_logits: torch.Tensor,
    top_k: int,
    renormalize: bool,
    scoring_func: str = "softmax",
    correction_bias: torch.Tensor | None = None,
    num_expert_group: int | None = None,
    topk_group: int | None = None,
    routed_scaling_factor: float = 1.0,
    jitter_eps: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score the experts (float32), pick the top-k, optionally renormalise the picked weights
    to sum to 1, scale them by ``routed_scaling_factor``. -> (weights [T, K] float32, ids [T, K] int64).

    ``scoring_func``: "softmax" over the experts (Mixtral, Qwen MoE, OLMoE, ERNIE 4.5 MoE),
    "sigmoid" per expert (GLM-4.5, DeepSeek-V3), or "sparsemixer" (PhiMoE's two-step masked
    softmax, top-2 only, ``jitter_eps`` its relative window). ``correction_bias`` [E] is added
    to the scores for the choice only (the weights stay the unbiased scores: ERNIE 4.5 MoE's
    and DeepSeek-V3's noaux_tc).
    ``num_expert_group`` / ``topk_group``: group-limited choice - the experts split into
    groups, each scored by its best expert (the sum of its best two with a correction bias),
    and only the ``topk_group`` best groups' experts are candidates."""
    if scoring_func == "sparsemixer":
        return sparsemixer_top2(router_logits, top_k, jitter_eps)
    logits = router_logits.float()
    if scoring_func == "softmax":
        scores = torch.softmax(logits, dim=-1)
    elif scoring_func == "sigmoid":
        scores = logits.sigmoid()
    else:
        raise ValueError(f"unsupported MoE scoring function {scoring_func!r}")
    choice = scores if correction_bias is None else scores + correction_bias.float().reshape(-1)
    if num_expert_group is not None and num_expert_group > 1:
        num_tokens, num_experts = choice.shape
        grouped = choice.view(num_tokens, num_expert_group, num_experts // num_expert_group)
        if correction_bias is None:
            group_scores = grouped.max(dim=-1).values
        else:
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        group_ids = torch.topk(group_scores, topk_group or num_expert_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_ids, 1.0)
        expert_mask = group_mask.unsqueeze(-1).expand_as(grouped).reshape(num_tokens, num_experts)
        choice = choice.masked_fill(expert_mask == 0, float("-inf"))
    if correction_bias is None and num_expert_group in (None, 1):
        weights, ids = torch.topk(scores, top_k, dim=-1)
    else:
        ids = torch.topk(choice, top_k, dim=-1).indices
        weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if routed_scaling_factor != 1.0:
        weights = weights * routed_scaling_factor
    return weights, ids


def sparsemixer_top2(router_logits: torch.Tensor, top_k: int, jitter_eps: float = 0.01
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's routing at inference (``sparsemixer`` without its training-time sampling):
    the best expert, weighted by its softmax over the experts whose logit is within a relative
    ``2 * jitter_eps`` of it; then the best of the others, weighted the same way with the first
    one masked out."""
    if top_k != 2:
        raise ValueError(f"sparsemixer routing picks 2 experts, not {top_k}")
    scores = router_logits.float()
    weights, ids = [], []
    masked_scores = scores
    for _ in range(2):
        best, best_id = masked_scores.max(dim=-1, keepdim=True)
        factor = scores.abs().clamp(min=best)
        outside = ((best - scores) / factor) > (2 * jitter_eps)
        gates = torch.softmax(masked_scores.masked_fill(outside, float("-inf")), dim=-1)
        weights.append(gates.gather(-1, best_id))
        ids.append(best_id)
        masked_scores = torch.scatter(scores, -1, best_id, float("-inf"))
    return torch.cat(weights, dim=-1), torch.cat(ids, dim=-1)


def apply_activation(gate_up: torch.Tensor, activation: str = "silu", swiglu_alpha: float = 1.702,
                     swiglu_limit: float = 7.0) -> torch.Tensor:
    """[N, 2I] (gate columns, then up) -> [N, I]. "silu": silu(gate) * up. "swigluoai"
    (gpt-oss's clamped SwiGLU): gate clamped above at ``swiglu_limit``, up clamped to
    +-limit, then (up + 1) * gate * sigmoid(alpha * gate)."""
    gate, up = gate_up.chunk(2, dim=-1)
    if activation == "silu":
        return F.silu(gate) * up
    if activation == "swigluoai":
        gate = gate.clamp(max=swiglu_limit)
        up = up.clamp(min=-swiglu_limit, max=swiglu_limit)
        return (up + 1) * (gate * torch.sigmoid(gate * swiglu_alpha))
    raise ValueError(f"unsupported MoE activation {activation!r}")


def fused_experts(
    hidden_states: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]: gate rows then up rows
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # [T, K] float32
    topk_ids: torch.Tensor,  # [T, K] int
    w13_bias: torch.Tensor | None = None,  # [E, 2I]
    w2_bias: torch.Tensor | None = None,  # [E, H]
    activation: str = "silu",
    swiglu_alpha: float = 1.702,
    swiglu_limit: float = 7.0,
    skip_negative_ids: bool = False,
) -> torch.Tensor:
    """sum_k weight_k * (w2[e_k] @ act(w13[e_k] x + b13[e_k]) + b2[e_k]), one expert at a time
    over the tokens routed to it (``apply_activation``; the biases are gpt-oss's).
    ``skip_negative_ids``: slots whose id is negative (experts another expert-parallel rank
    holds) contribute nothing. -> [T, H] in the input dtype (accumulated in float32)."""
    num_experts = w13.shape[0]
    out = torch.zeros(hidden_states.shape, dtype=torch.float32, device=hidden_states.device)
    flat_ids = topk_ids.reshape(-1).long()
    if skip_negative_ids:  # -1 -> a last bucket that is never computed
        flat_ids = torch.where(flat_ids < 0, num_experts, flat_ids)
    # Expert of each (token, slot), grouped: one sort instead of a mask per expert.
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=num_experts).tolist()[:num_experts]
    top_k = topk_ids.shape[1]
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        slots = order[start : start + count]
        start += count
        tokens = slots // top_k
        x = hidden_states.index_select(0, tokens)
        gate_up = F.linear(x, w13[expert], None if w13_bias is None else w13_bias[expert])
        act = apply_activation(gate_up, activation, swiglu_alpha, swiglu_limit)
        y = F.linear(act, w2[expert], None if w2_bias is None else w2_bias[expert])
        out.index_add_(0, tokens, y.float() * topk_weights.reshape(-1)[slots].unsqueeze(1))
    return out.to(hidden_states.dtype)
