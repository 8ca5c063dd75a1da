"""Rotary position embedding for the encoders (ModernBERT, NomicBERT, GTE): neox style
(rotate_half, cos/sin over the two halves), computed from the step's positions in float32, as
transformers' ``apply_rotary_pos_emb`` does. Plain torch: the same on CPU and GPU."""

from __future__ import annotations

from typing import Any

import torch

from pagedlm.config import ConfigError


def rope_theta(hf_config: Any, layer_type: str | None = None, default: float = 10000.0) -> float:
    """The RoPE base of a config (``rope_parameters``, per layer type where the config has
    several, else ``rope_theta``); only plain RoPE (rope_type "default") is supported."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ConfigError(f"{type(hf_config).__name__}: rope_type {rope_type!r} is not supported by this encoder "
                          "(plain RoPE only)")
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    return float(theta if theta is not None else default)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """[T] positions -> ([T, 1, head_dim], [T, 1, head_dim]) float32 cos and sin."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device)
                                / head_dim))
    freqs = positions.float()[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[T, H * D] -> [T, H * D], rotated in float32."""
    t = x.view(x.shape[0], num_heads, -1).float()
    half = t.shape[-1] // 2
    rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
    return (t * cos + rotated * sin).to(x.dtype).reshape(x.shape)
