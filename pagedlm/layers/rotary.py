"""Rotary position embedding with the scaling types Llama/Qwen/Mistral configs use."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from pagedlm.kernels import ops

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")
# Older Phi-3 configs call LongRoPE "su" (transformers maps it the same way).
_ROPE_TYPE_ALIASES = {"su": "longrope"}


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


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude factor for a context stretched ``scale`` times (1 when not stretched)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(inv_freq: torch.Tensor, head_dim: int, base: float, params: dict[str, Any],
                   original_max: int, config_max_position: int) -> tuple[torch.Tensor, float]:
    """YaRN (transformers' _compute_yarn_parameters): interpolate low frequencies by ``factor``,
    keep high ones, a linear ramp between the correction dims set by beta_fast / beta_slow;
    cos/sin are scaled by the attention factor (mscale)."""
    original_max = params.get("original_max_position_embeddings", original_max)
    factor = params.get("factor") or config_max_position / original_max

    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
        else:
            attention_factor = yarn_get_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return (head_dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    return inv_freq / factor * (1 - extrapolation) + inv_freq * extrapolation, float(attention_factor)


def _longrope_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any], original_max: int, max_position: int,
                       config_max_position: int) -> tuple[torch.Tensor, float]:
    """LongRoPE / "su" (Phi-3): per-frequency divisors, ``short_factor`` within the original
    context and ``long_factor`` beyond it. transformers picks the set per forward call from
    the longest position in it; the engine caches one table, so the set is picked once from
    the longest sequence it allows (max_model_len): within the original context this equals
    transformers, and so does a model run beyond it on prompts longer than that context."""
    original_max = params.get("original_max_position_embeddings", original_max)
    factor = params.get("factor") or config_max_position / original_max
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original_max))
    ext = params["long_factor"] if max_position > original_max else params["short_factor"]
    ext_t = torch.tensor(ext, dtype=torch.float64)
    if ext_t.shape != inv_freq.shape:
        raise ValueError(f"longrope factors have {ext_t.numel()} entries, expected {inv_freq.numel()} (head_dim / 2)")
    return inv_freq / ext_t, float(attention_factor)


def compute_cos_sin_cache(
    head_dim: int, max_position: int, base: float, rope_type: str, params: dict[str, Any], original_max: int,
    config_max_position: int | None = None,
) -> torch.Tensor:
    """[max_position, head_dim] float32: cos of each frequency, then sin (both times the
    attention factor of yarn / longrope). ``config_max_position`` is the checkpoint's
    max_position_embeddings (LongRoPE derives its default factor from it)."""
    rope_type = _ROPE_TYPE_ALIASES.get(rope_type, rope_type)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope scaling type {rope_type!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})")
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor < 1 (RoPE on part of each head) is not supported")
    if rope_type == "dynamic" and params.get("alpha"):
        # NTK with a fixed alpha (HunYuan's "ntk_alpha"): the base is stretched once, whatever
        # the sequence length.
        base = base * float(params["alpha"]) ** (head_dim / (head_dim - 2))
        rope_type = "default"
    if rope_type == "dynamic" and max_position > original_max:
        # Dynamic NTK: HF rescales the base once a sequence outgrows the original context.
        # Positions are cached once, so use the base for the longest allowed sequence (vLLM
        # does the same); within the original context this equals the default.
        factor = params["factor"]
        base = base * ((factor * max_position / original_max) - (factor - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    attention_factor = 1.0
    if rope_type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, params)
    elif rope_type == "yarn":
        inv_freq, attention_factor = _yarn_inv_freq(
            inv_freq, head_dim, base, params, original_max, config_max_position or original_max)
    elif rope_type == "longrope":
        inv_freq, attention_factor = _longrope_inv_freq(
            inv_freq, params, original_max, max_position, config_max_position or original_max)
    t = torch.arange(max_position, dtype=torch.float64)
    if rope_type == "linear":
        t = t / params["factor"]
    freqs = torch.outer(t, inv_freq)
    return (torch.cat((freqs.cos(), freqs.sin()), dim=-1) * attention_factor).float()


def rotate_partial(
    positions: torch.Tensor,  # [T] int64
    query: torch.Tensor,  # [T, Hq * D]
    key: torch.Tensor,  # [T, Hkv * D]
    cos_sin_cache: torch.Tensor,  # [max_pos, R] float32: cos of the R / 2 frequencies, then sin
    head_dim: int,
    is_neox_style: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on the first R = rotary_dim features of each head, the rest passed through
    (GPT-NeoX's ``rotary_pct``, GPT-J's ``rotary_dim``). Neox style rotates the halves of
    those R features (x_i with x_{i + R/2}); GPT-J style (``is_neox_style=False``) rotates
    adjacent pairs (x_{2i} with x_{2i+1}), frequency i on pair i. Plain torch on every device."""
    rotary_dim = cos_sin_cache.shape[-1]
    cos, sin = cos_sin_cache.index_select(0, positions).unsqueeze(1).chunk(2, dim=-1)  # [T, 1, R/2] each

    def rotate(x: torch.Tensor) -> torch.Tensor:
        heads = x.reshape(x.shape[0], -1, head_dim)
        rot = heads[..., :rotary_dim].float()
        if is_neox_style:
            x1, x2 = rot.chunk(2, dim=-1)
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        return torch.cat((out.to(x.dtype), heads[..., rotary_dim:]), dim=-1).reshape(x.shape)

    return rotate(query), rotate(key)


class RotaryEmbedding(nn.Module):
    """RoPE with a cos/sin table for every position the engine allows. ``rotary_dim`` (default
    the whole head) rotates only the first features of each head; ``is_neox_style=False``
    rotates adjacent pairs (GPT-J, Cohere) instead of the two halves. The plain case (whole
    head, neox style) runs fused with the KV cache write (``fuses_with_cache_write``); the
    others through ``rotate_partial`` before it."""

    def __init__(self, head_dim: int, max_position: int, base: float, rope_type: str = "default",
                 params: dict[str, Any] | None = None, original_max: int | None = None,
                 config_max_position: int | None = None, rotary_dim: int | None = None,
                 is_neox_style: bool = True) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim
        self.is_neox_style = is_neox_style
        if self.rotary_dim > head_dim or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim {self.rotary_dim} must be even and at most head_dim {head_dim}")
        params = dict(params or {})
        if rotary_dim is not None:
            params.pop("partial_rotary_factor", None)  # the caller applied it: rotary_dim
        cache = compute_cos_sin_cache(self.rotary_dim, max_position, base, rope_type, params,
                                      original_max or max_position, config_max_position)
        self.register_buffer("cos_sin_cache", cache, persistent=False)
        self.fuses_with_cache_write = self.rotary_dim == head_dim and is_neox_style

    def forward(self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # query [T, Hq * D], key [T, Hkv * D]
        if not self.fuses_with_cache_write:
            return rotate_partial(positions, query, key, self.cos_sin_cache, self.head_dim, self.is_neox_style)
        return ops.rotary_embedding(positions, query, key, self.cos_sin_cache, self.head_dim)
