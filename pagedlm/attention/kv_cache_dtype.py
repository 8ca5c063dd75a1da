"""The KV cache's element type: ``--kv-cache-dtype auto | fp8 | fp8_e4m3 | fp8_e5m2``.

``auto`` stores K/V in the model dtype. The fp8 types store ``fp8(x / scale)`` with one
float32 scale per layer for K and one for V (per-tensor, the same on every tensor-parallel
rank); attention reads ``fp8 * scale`` and computes in the model dtype / float32. The scales
come from the checkpoint when it has them (``pagedlm.models.loader.kv_scales``), else 1.0 —
right for activations of order one (e4m3 covers +-448, with 3 mantissa bits; e5m2 +-57344 with
2). ``fp8`` means ``fp8_e4m3`` (vLLM's spelling; OCP e4m3fn, as on Hopper).

Half the bytes per element, so the same KV memory holds twice the blocks (``memory.py`` sizes
by the cache's element size).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagedlm.config import ConfigError

if TYPE_CHECKING:
    import torch

# --kv-cache-dtype value -> canonical name (CacheConfig.cache_dtype)
_CANONICAL = {"auto": "auto", "fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}
KV_CACHE_DTYPES = tuple(_CANONICAL)


def resolve_kv_cache_dtype(name: str, device: str) -> str:
    """The canonical cache dtype name; refuses unknown names and fp8 where the GPU cannot
    convert to it (Triton's fp8 casts need compute capability 8.9: Ada, Hopper and later)."""
    if name not in _CANONICAL:
        raise ConfigError(f"kv_cache_dtype must be one of {list(KV_CACHE_DTYPES)}, got {name!r}")
    canonical = _CANONICAL[name]
    if canonical != "auto" and device == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability()
        if (major, minor) < (8, 9):
            raise ConfigError(f"kv_cache_dtype={name!r} needs a GPU with fp8 support (compute capability 8.9 or "
                              f"later: Ada, Hopper); this one is {major}.{minor}. Use kv_cache_dtype='auto'.")
    return canonical


def kv_cache_torch_dtype(cache_dtype: str, model_dtype: "torch.dtype") -> "torch.dtype":
    """The element type of the KV cache tensors."""
    import torch

    if cache_dtype == "auto":
        return model_dtype
    if cache_dtype == "fp8_e4m3":
        return torch.float8_e4m3fn
    if cache_dtype == "fp8_e5m2":
        return torch.float8_e5m2
    raise ConfigError(f"unknown KV cache dtype {cache_dtype!r}")


def is_fp8(dtype: "torch.dtype") -> bool:
    import torch

    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


def fp8_max(dtype: "torch.dtype") -> float:
    """Largest finite value: quantized K/V are clamped to +-this (e4m3fn has no inf; a value
    past it would otherwise become NaN)."""
    import torch

    return float(torch.finfo(dtype).max)
