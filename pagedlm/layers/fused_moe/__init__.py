"""Mixture-of-experts: the FusedMoE layer, its PyTorch reference and its Triton kernel."""

from pagedlm.layers.fused_moe.layer import FusedMoE, moe_tp_rank_size

__all__ = ["FusedMoE", "moe_tp_rank_size"]
