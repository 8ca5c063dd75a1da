"""FusedMoE: the routed experts of one MoE block, stored stacked (w13 [E, 2I, H], w2
[E, H, I]) and run as one fused op: the PyTorch reference on CPU, the Triton grouped-GEMM
kernel on CUDA (``ops.current_backend()`` picks, as for every other op).

Checkpoints store one tensor per expert and projection (``experts.3.w1.weight`` in
Mixtral, ``experts.3.gate_proj.weight`` in Qwen MoE); ``expert_params_mapping`` routes each
into its slice through ``weight_loader``. Others store every expert in one 3-D tensor
(GraniteMoe's ``input_linear`` [E, 2I, H] / ``output_linear`` [E, H, I], transformers 5's
``experts.gate_up_proj`` / ``experts.down_proj``): ``stacked_expert_params_mapping`` routes
those, each expert's slice then loaded as a per-expert tensor would be. Under tensor
parallelism each rank keeps a slice of the intermediate dim: the loader cuts it with one
``narrow`` from ``moe_tp_rank_size()``.

Expert parallelism (vLLM's ``enable_expert_parallel``, ``moe_ep_rank_size()``): the
tensor-parallel ranks split the experts instead, each holding a contiguous run of whole
experts (``determine_expert_map``: ``E // ep`` each, the first ``E % ep`` ranks one more).
Routing still scores every expert; the top-k ids then go through the expert map (global id ->
local index, -1 elsewhere) and the slots of other ranks' experts are skipped, so a rank's
output is its experts' share of each token, and the same all-reduce as under tensor
parallelism sums the shares. The loader keeps only the local experts' tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedlm.kernels import ops
from pagedlm.layers.fused_moe import reference


def moe_tp_rank_size() -> tuple[int, int]:
    """(tp_rank, tp_size) for sharding experts; (0, 1) while no tensor-parallel module exists."""
    try:
        from pagedlm.worker import distributed  # type: ignore[attr-defined]  # noqa: PLC0415
    except ImportError:
        return 0, 1
    rank_fn = getattr(distributed, "get_tp_rank", None) or getattr(distributed, "get_tensor_model_parallel_rank")
    size_fn = getattr(distributed, "get_tp_size", None) or getattr(distributed, "get_tensor_model_parallel_world_size")
    return int(rank_fn()), int(size_fn())


def moe_ep_rank_size() -> tuple[int, int]:
    """(ep_rank, ep_size) for splitting experts whole; (0, 1) without expert parallelism."""
    try:
        from pagedlm.worker.distributed import get_expert_parallel_rank_size  # noqa: PLC0415
    except ImportError:
        return 0, 1
    return get_expert_parallel_rank_size()


def determine_expert_map(ep_size: int, ep_rank: int, num_experts: int) -> tuple[int, torch.Tensor | None]:
    """vLLM's linear placement: (this rank's expert count, map [E] int32 of global id ->
    local index, -1 for other ranks' experts; None when ep_size is 1). Rank r holds the
    contiguous run starting at ``r * (E // ep) + min(r, E % ep)``: ``E // ep`` experts, one
    more on the first ``E % ep`` ranks."""
    if ep_size == 1:
        return num_experts, None
    base, remainder = divmod(num_experts, ep_size)
    local = base + (1 if ep_rank < remainder else 0)
    if local == 0:
        raise ValueError(f"expert parallelism over {ep_size} ranks needs at least as many experts, got {num_experts}")
    start = ep_rank * base + min(ep_rank, remainder)
    expert_map = torch.full((num_experts,), -1, dtype=torch.int32)
    expert_map[start : start + local] = torch.arange(local, dtype=torch.int32)
    return local, expert_map


def fused_moe_impl():
    """The module holding select_experts / fused_experts for the current kernel backend."""
    if ops.current_backend() == "triton":
        from pagedlm.layers.fused_moe import triton_moe  # noqa: PLC0415 - needs CUDA + Triton

        return triton_moe
    return reference


class FusedMoE(nn.Module):
    def __init__(self, num_experts: int, top_k: int, hidden_size: int, intermediate_size: int,
                 renormalize: bool, scoring_func: str = "softmax", num_expert_group: int | None = None,
                 topk_group: int | None = None, routed_scaling_factor: float = 1.0,
                 jitter_eps: float = 0.01, has_bias: bool = False, activation: str = "silu",
                 swiglu_alpha: float = 1.702, swiglu_limit: float = 7.0) -> None:
        """Routing options (see ``reference.select_experts``): ``scoring_func`` softmax /
        sigmoid / sparsemixer, group-limited choice, a scale on the routed weights; a
        correction bias comes with each forward (the router holds it). ``has_bias``: per-expert
        biases on both projections (w13_bias [E, 2I], w2_bias [E, H]; gpt-oss). ``activation``
        (``reference.apply_activation``): "silu" or gpt-oss's clamped "swigluoai"."""
        super().__init__()
        # The tensor-parallel group: the output is all-reduced over it in either layout.
        group_rank, self.reduce_size = moe_tp_rank_size()
        self.ep_rank, self.ep_size = moe_ep_rank_size()
        # How the experts themselves are split (vLLM's moe tp): on the intermediate dim over the
        # group, or not at all under expert parallelism (each expert whole on one rank).
        self.tp_rank, self.tp_size = (0, 1) if self.ep_size > 1 else (group_rank, self.reduce_size)
        if intermediate_size % self.tp_size:
            raise ValueError(f"moe intermediate size {intermediate_size} is not divisible by tp size {self.tp_size}")
        self.num_experts = num_experts  # global: the router scores this many
        self.local_num_experts, expert_map = determine_expert_map(self.ep_size, self.ep_rank, num_experts)
        self.expert_map: torch.Tensor | None
        # A buffer (moves with the model, not a checkpoint tensor); the host copy serves the loader.
        self.register_buffer("expert_map", expert_map, persistent=False)
        self._local_index = None if expert_map is None else expert_map.tolist()
        self.top_k = top_k
        self.renormalize = renormalize
        self.routing = dict(scoring_func=scoring_func, num_expert_group=num_expert_group, topk_group=topk_group,
                            routed_scaling_factor=float(routed_scaling_factor), jitter_eps=float(jitter_eps))
        self.intermediate_size = intermediate_size // self.tp_size  # this rank's share
        i, e = self.intermediate_size, self.local_num_experts
        self.w13_weight = nn.Parameter(torch.empty(e, 2 * i, hidden_size), requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(e, hidden_size, i), requires_grad=False)
        self.w13_bias: nn.Parameter | None = None
        self.w2_bias: nn.Parameter | None = None
        if has_bias:
            self.w13_bias = nn.Parameter(torch.zeros(e, 2 * i), requires_grad=False)
            self.w2_bias = nn.Parameter(torch.zeros(e, hidden_size), requires_grad=False)
        self.activation = dict(activation=activation, swiglu_alpha=float(swiglu_alpha),
                               swiglu_limit=float(swiglu_limit))
        for p in (self.w13_weight, self.w2_weight, self.w13_bias, self.w2_bias):
            if p is not None:
                p.weight_loader = self.weight_loader  # type: ignore[attr-defined]

    @staticmethod
    def expert_params_mapping(num_experts: int, gate: str, down: str, up: str) -> list[tuple[str, str, Any]]:
        """(checkpoint fragment, parameter fragment, (expert, shard)) for ``load_params``:
        ``experts.3.<gate>.`` -> ``experts.w13_`` shard (3, "w1"), <up> -> "w3", <down> -> "w2"."""
        mapping = []
        for e in range(num_experts):
            for ckpt, shard in ((gate, "w1"), (up, "w3"), (down, "w2")):
                target = "experts.w2_" if shard == "w2" else "experts.w13_"
                mapping.append((f"experts.{e}.{ckpt}.", target, (e, shard)))
        return mapping

    @staticmethod
    def stacked_expert_params_mapping(gate_up: str = ".experts.gate_up_proj", down: str = ".experts.down_proj",
                                      experts: str = ".experts.") -> list[tuple[str, str, Any]]:
        """(checkpoint fragment, parameter fragment, (None, shard)) for checkpoints holding all
        experts in one tensor: ``gate_up`` [E, 2I, H] (gate rows, then up) -> ``<experts>w13_weight``,
        ``down`` [E, H, I] -> ``<experts>w2_weight``. Defaults: transformers 5's names;
        GraniteMoe's are ``block_sparse_moe.input_linear.weight`` / ``output_linear.weight``."""
        return [(gate_up, f"{experts}w13_weight", (None, "w13")), (down, f"{experts}w2_weight", (None, "w2"))]

    def local_expert(self, expert: int) -> int | None:
        """The local index of global expert ``expert``; None if another EP rank holds it."""
        if self._local_index is None:
            return expert
        local = self._local_index[expert]
        return None if local < 0 else local

    def weight_loader(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: tuple[int | None, str]) -> None:
        """``shard_id``: (global expert, "w1" / "w3" / "w2"), or (None, "w13" / "w2") for a
        stacked tensor of every expert. Under expert parallelism other ranks' experts are skipped."""
        expert, shard = shard_id
        if expert is None:  # every expert in one tensor
            if loaded_weight.shape[0] != self.num_experts:
                raise ValueError(f"stacked experts {shard}: checkpoint has {loaded_weight.shape[0]} experts, "
                                 f"expected {self.num_experts}")
            for e in range(self.num_experts):
                if shard == "w2":
                    self.weight_loader(param, loaded_weight[e], (e, "w2"))
                else:
                    gate, up = loaded_weight[e].chunk(2, dim=0)
                    self.weight_loader(param, gate, (e, "w1"))
                    self.weight_loader(param, up, (e, "w3"))
            return
        local = self.local_expert(expert)
        if local is None:
            return  # another EP rank's expert
        expert = local
        i = self.intermediate_size
        # This rank's slice of the intermediate dim: rows of w1 / w3, columns of w2 (w2's bias
        # [H] is whole on every rank; only rank 0 adds it).
        dim = 1 if shard == "w2" else 0
        if not (shard == "w2" and loaded_weight.dim() == 1):
            loaded_weight = loaded_weight.narrow(dim, self.tp_rank * i, i)
        if shard == "w2":
            target = param.data[expert]
        else:
            target = param.data[expert].narrow(0, 0 if shard == "w1" else i, i)
        if target.shape != loaded_weight.shape:
            raise ValueError(f"expert {expert} {shard}: checkpoint shape {tuple(loaded_weight.shape)}, "
                             f"expected {tuple(target.shape)}")
        target.copy_(loaded_weight)

    def forward(self, hidden_states: torch.Tensor, router_logits: torch.Tensor,
                correction_bias: torch.Tensor | None = None) -> torch.Tensor:
        # hidden_states [T, H], router_logits [T, E], correction_bias [E] (choice only) -> [T, H]
        impl = fused_moe_impl()
        topk_weights, topk_ids = impl.select_experts(router_logits, self.top_k, self.renormalize,
                                                     correction_bias=correction_bias, **self.routing)
        extra: dict[str, Any] = {}
        if self.expert_map is not None:
            # Global ids -> local ones; other ranks' experts become -1, their slots skipped.
            topk_ids = self.expert_map[topk_ids]
            topk_weights = topk_weights.masked_fill(topk_ids < 0, 0.0)
            extra["skip_negative_ids"] = True
        if self.w13_bias is not None:
            # Under tensor parallelism the partial sums are all-reduced: one rank adds w2's bias.
            # Under expert parallelism (tp_rank 0 everywhere) each expert's owner adds its own.
            extra.update(w13_bias=self.w13_bias, w2_bias=self.w2_bias if self.tp_rank == 0 else None)
        if self.activation["activation"] != "silu":
            extra.update(self.activation)
        out = impl.fused_experts(hidden_states, self.w13_weight, self.w2_weight, topk_weights, topk_ids, **extra)
        if self.reduce_size > 1:
            # Each rank holds a slice of every expert's intermediate dim, or (expert parallelism)
            # a share of the experts: partial sums either way.
            from pagedlm.worker.distributed import tensor_model_parallel_all_reduce  # noqa: PLC0415

            out = tensor_model_parallel_all_reduce(out)
        return out
