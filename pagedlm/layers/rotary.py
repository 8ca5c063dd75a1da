"""Rotary position embedding with the scaling types Llama/Qwen/Mistral configs use."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pagedlm.kernels import ops

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


def _llama3_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    factor = params["factor"]
    low_freq_factor = params.get("low_freq_factor", 1.0)
    high_freq_factor = params.get("high_freq_factor", 4.0)
    old_context_len = params["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def compute_cos_sin_cache(
    head_dim: int, max_position: int, base: float, rope_type: str, params: dict[str, Any], original_max: int
) -> torch.Tensor:
    """[max_position, head_dim] float32: cos of each frequency, then sin."""
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope scaling type {rope_type!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})")
    if rope_type == "dynamic" and max_position > original_max:
        # Dynamic NTK: HF rescales the base once a sequence outgrows the original context.
        # Positions are cached once, so use the base for the longest allowed sequence (vLLM
        # does the same); within the original context this equals the default.
        factor = params["factor"]
        base = base * ((factor * max_position / original_max) - (factor - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if rope_type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, params)
    t = torch.arange(max_position, dtype=torch.float64)
    if rope_type == "linear":
        t = t / params["factor"]
    freqs = torch.outer(t, inv_freq)
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1).float()


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, base: float, rope_type: str = "default",
                 params: dict[str, Any] | None = None, original_max: int | None = None) -> None:
        super().__init__()
        self.head_dim = head_dim
        cache = compute_cos_sin_cache(head_dim, max_position, base, rope_type, params or {}, original_max or max_position)
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # query [T, Hq * D], key [T, Hkv * D]
        return ops.rotary_embedding(positions, query, key, self.cos_sin_cache, self.head_dim)
