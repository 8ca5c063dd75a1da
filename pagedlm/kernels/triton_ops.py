"""The Triton (CUDA) implementations of the op table, same signatures and semantics as
``pagedlm.kernels.reference``; ``ops.use_backend("triton")`` takes every name in ``__all__`` from here.

Each kernel lives in its own module beside this one:
  triton_norm        rms_norm, fused_add_rms_norm (and each with per-token 8-bit output)
  triton_activation  silu_and_mul
  triton_rotary      rotary_embedding
  triton_kv_cache    write_kv_cache
  triton_rope_kv     rotary_write_kv_cache (the two above in one launch)
  triton_attention   paged_attention (mixed batches; split-K decode)
  triton_sampling    sample_argmax (greedy / temperature sampling, one pass over the logits)
None of them synchronises with the host, so all can be captured in a CUDA graph.
"""

from __future__ import annotations

from pagedlm.kernels.triton_activation import silu_and_mul
from pagedlm.kernels.triton_attention import paged_attention
from pagedlm.kernels.triton_kv_cache import write_kv_cache
from pagedlm.kernels.triton_norm import fused_add_rms_norm, fused_add_rms_norm_quant, rms_norm, rms_norm_quant
from pagedlm.kernels.triton_rope_kv import rotary_write_kv_cache
from pagedlm.kernels.triton_rotary import rotary_embedding
from pagedlm.kernels.triton_sampling import sample_argmax
from pagedlm.kernels.step_prep import prepare_step_triton as prepare_step

__all__ = [
    "fused_add_rms_norm",
    "fused_add_rms_norm_quant",
    "paged_attention",
    "rms_norm",
    "rms_norm_quant",
    "rotary_embedding",
    "rotary_write_kv_cache",
    "sample_argmax",
    "silu_and_mul",
    "write_kv_cache",
]
