"""The op table the layers call through.

The backend is chosen once at start-up (``use_backend``) from the platform: "torch" (the
reference, CPU and fallback) or "triton" (CUDA). Layers call ``ops.rms_norm(...)`` etc. and
never check the device themselves.
"""

from __future__ import annotations

from pagedlm.kernels import reference

rms_norm = reference.rms_norm
fused_add_rms_norm = reference.fused_add_rms_norm
silu_and_mul = reference.silu_and_mul
rms_norm_quant = reference.rms_norm_quant
fused_add_rms_norm_quant = reference.fused_add_rms_norm_quant
rotary_embedding = reference.rotary_embedding
write_kv_cache = reference.write_kv_cache
rotary_write_kv_cache = reference.rotary_write_kv_cache
paged_attention = reference.paged_attention
prepare_step = reference.prepare_step
sample_argmax = reference.sample_argmax

_OP_NAMES = (
    "rms_norm",
    "fused_add_rms_norm",
    "silu_and_mul",
    "rms_norm_quant",
    "fused_add_rms_norm_quant",
    "rotary_embedding",
    "write_kv_cache",
    "rotary_write_kv_cache",
    "paged_attention",
    "prepare_step",
    "sample_argmax",
)
_current = "torch"


def use_backend(name: str) -> None:
    """Switch every op to ``name`` ("torch" or "triton")."""
    global _current
    if name == "torch":
        impl = reference
    elif name == "triton":
        from pagedlm.kernels import triton_ops as impl  # noqa: PLC0415 - needs CUDA + Triton
    else:
        raise ValueError(f"unknown kernel backend {name!r}")
    for op in _OP_NAMES:
        globals()[op] = getattr(impl, op)
    _current = name


def current_backend() -> str:
    return _current
