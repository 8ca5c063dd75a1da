from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from pagedlm.forward_context import get_attn_metadata
from pagedlm.kernels import ops
from pagedlm.worker.distributed import get_tensor_model_parallel_rank, local_attention_heads

if TYPE_CHECKING:
    from pagedlm.layers.rotary import RotaryEmbedding


K_SCALE_CONSTANT = 200.0  # vLLM's defaults (its K_SCALE_CONSTANT / V_SCALE_CONSTANT)
V_SCALE_CONSTANT = 100.0
MIN_KV_SCALE = 1e-8  # an all-zero first batch must not give a zero scale


class Attention(nn.Module):
    """Paged attention: writes this step's K/V through the slot mapping, then attends over
    each sequence's context through its block table. The runner binds ``kv_cache``
    ([2, num_blocks, block_size, num_kv_heads, head_dim]) before the first forward.

    ``num_heads`` / ``num_kv_heads`` are the model's; the layer keeps this tensor-parallel
    rank's share (KV heads replicated when there are more ranks than KV heads). The cache's
    dtype says whether K/V are stored as they are or as fp8 with ``k_scale`` / ``v_scale``."""

    def __init__(self, num_heads: int, head_dim: int, num_kv_heads: int, scale: float,
                 sliding_window: int | None = None, softcap: float | None = None, sinks: bool = False) -> None:
        """``sinks``: the layer has learned attention sinks (gpt-oss), a ``sinks`` parameter of
        one logit per query head (this rank's heads, float32) that joins each softmax's
        denominator; its checkpoint tensor holds every head and loads through ``_load_sinks``."""
        super().__init__()
        self.num_heads, self.num_kv_heads = local_attention_heads(num_heads, num_kv_heads)
        self.head_dim = head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.softcap = softcap  # attention logit soft-capping (Gemma 2); None = off
        self.kv_cache: torch.Tensor | None = None
        self.sinks: nn.Parameter | None = None
        if sinks:
            self.sinks = nn.Parameter(torch.zeros(self.num_heads, dtype=torch.float32), requires_grad=False)
            self.sinks.weight_loader = self._load_sinks  # type: ignore[attr-defined]
        # Per-tensor scales of an fp8 KV cache (it holds fp8(k / k_scale)); 1.0 unless the
        # checkpoint has k_scale / v_scale (pagedlm.models.loader.kv_scales). Device tensors,
        # not floats, so the kernels read them at run time (CUDA graphs keep working).
        self.register_buffer("k_scale", torch.ones(1, dtype=torch.float32), persistent=False)
        self.register_buffer("v_scale", torch.ones(1, dtype=torch.float32), persistent=False)
        # --calculate-kv-scales: armed by the runner once warmed up, so the first real batch
        # sets k_scale / v_scale from its own keys and values (``_calculate_kv_scales``).
        self.calculate_kv_scales = False

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor | None = None,
                rotary: "RotaryEmbedding | None" = None) -> torch.Tensor:
        """q [T, Hq * D], k / v [T, Hkv * D] -> [T, Hq * D]. With ``rotary`` (and ``positions``)
        q and k arrive unrotated: RoPE and the cache write run as one op (one launch on a GPU)."""
        meta = get_attn_metadata()
        num_tokens = q.shape[0]
        if rotary is not None and not rotary.fuses_with_cache_write:  # partial / GPT-J-style RoPE
            q, k = rotary(positions, q, k)
            rotary = None
        if self.calculate_kv_scales:
            if rotary is not None:  # the scales describe the rotated keys the cache stores
                q, k = ops.rotary_embedding(positions, q, k, rotary.cos_sin_cache, rotary.head_dim)
                rotary = None
            self._calculate_kv_scales(k, v, meta.slot_mapping)
        # Every sequence's K/V for this step is written before any sequence attends, so a
        # request may read blocks another request in the same batch fills (prefix sharing).
        # A step with prefill rows hands the attention this step's (rotated) keys and values:
        # the GPU prefill kernel reads the new positions from them rather than the cache.
        new_kv = meta.max_query_len > 1
        if rotary is not None:
            q = ops.rotary_write_kv_cache(positions, q, k, v, rotary.cos_sin_cache, rotary.head_dim, self.kv_cache,
                                          meta.slot_mapping, self.k_scale, self.v_scale, return_key=new_kv)
            if new_kv:
                q, k = q
        else:
            ops.write_kv_cache(k.view(num_tokens, self.num_kv_heads, self.head_dim),
                               v.view(num_tokens, self.num_kv_heads, self.head_dim),
                               self.kv_cache, meta.slot_mapping, self.k_scale, self.v_scale)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        out = ops.paged_attention(
            q, self.kv_cache, meta.query_start_loc, meta.seq_lens, meta.block_tables,
            meta.max_query_len, meta.max_seq_len, self.scale, self.sliding_window, self.softcap,
            self.k_scale, self.v_scale, key=k if new_kv else None, value=v if new_kv else None,
            **({} if self.sinks is None else {"sinks": self.sinks}),
        )
        return out.view(num_tokens, self.num_heads * self.head_dim)

    def _load_sinks(self, param: torch.Tensor, loaded_weight: torch.Tensor, shard_id: object = None) -> None:
        """The checkpoint's sinks for every query head; this tensor-parallel rank keeps its own."""
        start = get_tensor_model_parallel_rank() * self.num_heads
        if loaded_weight.shape[0] < start + self.num_heads:
            raise ValueError(f"attention sinks: checkpoint has {loaded_weight.shape[0]} heads, "
                             f"this rank needs heads {start}..{start + self.num_heads - 1}")
        param.data.copy_(loaded_weight[start : start + self.num_heads].to(param.dtype))

    def _calculate_kv_scales(self, k: torch.Tensor, v: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        """vLLM's --calculate-kv-scales, once: k_scale = max|k| / 200 and v_scale = max|v| / 100
        over this batch's real tokens (vLLM's K_SCALE_CONSTANT / V_SCALE_CONSTANT: the cached
        fp8(k / k_scale) then stays within 200, fp8(v / v_scale) within 100, well inside e4m3's
        448)."""
        real = slot_mapping[: k.shape[0]] >= 0
        if not bool(real.any()):  # nothing of a request in this batch: wait for one that has
            return
        for scale, x, constant in ((self.k_scale, k, K_SCALE_CONSTANT), (self.v_scale, v, V_SCALE_CONSTANT)):
            peak = x.reshape(x.shape[0], -1)[real].abs().amax().float()
            scale.copy_((peak / constant).clamp_min(MIN_KV_SCALE).reshape(1))
        self.calculate_kv_scales = False
