"""Split-K GEMV for 8-bit weights at decode batch sizes (M = 1-16 rows).

y[M, N] = (a[M, K] @ w[N, K]^T) * scale_a[M] * scale_b[N] (+ bias)

``w`` holds fp8 e4m3 or int8 codes with a per-output-channel float32 scale ``scale_b``; ``a``
is either the activations quantized per token (fp8 / int8 codes with ``scale_a`` [M, 1], or a
per-tensor [1, 1]) or the activations themselves (bf16 / fp16, ``scale_a`` None: W8A16).
Same result as ``quant_reference.scaled_mm`` / ``weight_only_mm`` up to float32 summation
order: every code widens exactly to fp16 (fp8 e4m3 and int8 both fit; bf16 activations
of W8A16 widen the weight codes to bf16, also exact), the products
are exact in the float32 accumulator, and the scales multiply once at the end.

Why not cuBLAS: at M <= 16 cuBLASLt's fp8 GEMM and ``torch._int_mm`` (which needs 17+ rows,
so short batches are padded) reach a fraction of copy bandwidth, and int8 needs extra
launches for the float epilogue; a decode step is a pass over the weights, so the GEMV that
streams the 8-bit weight once at full bandwidth halves the time of the bf16 layer.

Each program owns BLOCK_N output columns and one of SPLIT_K slices of K (enough programs to
keep every SM streaming even for N = 4096); with SPLIT_K > 1 the slices write float32
partial sums [SPLIT_K, M, N] that one ``sum`` reduces (deterministic, no atomics).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

# The tile config and row limit of the bf16 GEMV (same program layout).
from pagedlm.kernels.triton_gemv import MAX_M, GemvConfig
from pagedlm.kernels.triton_gemv_fused import _partial_sums, _tile_indices
from pagedlm.kernels.pdl import launch_kwargs

FMA_MAX_M = 4


@dataclass(frozen=True)
class ScaledGemvConfig(GemvConfig):
    # For M <= FMA_MAX_M: plain multiply-adds on [M, BLOCK_N, BLOCK_K] register tiles reduced
    # once at the end, instead of tl.dot on a 16-row tile (which stages the weight tile through
    # shared memory for the tensor cores: work a GEMV at one row does not need).
    fma: bool = False


@triton.jit
def _scaled_gemv_kernel(
    a_ptr, w_ptr, scale_a_ptr, scale_b_ptr, out_ptr, M, N, K, k_per_split,
    stride_am, stride_wn, stride_sa, stride_os, stride_om,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, HAS_SCALE_A: tl.constexpr,
    COMPUTE_BF16: tl.constexpr, FMA: tl.constexpr, PDL: tl.constexpr = False,
):
    # No masks in the loop: K is a multiple of BLOCK_K (the host checks), and rows / columns
    # past M / N re-read the last valid one (clamped index); only the store is masked.
    pid_k = tl.program_id(1)
    rn, rm, rn_load, rm_load = _tile_indices(tl.program_id(0), M, N, BLOCK_M, BLOCK_N)
    k_lo = pid_k * k_per_split
    # the same K loop as the one-launch GEMV's (FMA: products of codes exact in float32, as in the dot)
    acc = _partial_sums(a_ptr, w_ptr, rm_load, rn_load, k_lo, tl.minimum(k_lo + k_per_split, K), stride_am,
                        stride_wn, BLOCK_M, BLOCK_N, BLOCK_K, not FMA, COMPUTE_BF16, False, PDL)
    acc = acc * tl.load(scale_b_ptr + rn_load)[None, :]
    if HAS_SCALE_A:
        acc = acc * tl.load(scale_a_ptr + rm_load * stride_sa)[:, None]
    out = out_ptr + pid_k.to(tl.int64) * stride_os + rm[:, None] * stride_om + rn[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def scaled_gemv(a: torch.Tensor, w: torch.Tensor, scale_a: torch.Tensor | None, scale_b: torch.Tensor,
                out_dtype: torch.dtype, bias: torch.Tensor | None = None,
                config: GemvConfig = GemvConfig()) -> torch.Tensor:
    """a [M <= 16, K] (codes with scale_a [M, 1] or [1, 1], or float with scale_a None),
    w [N, K] 8-bit codes, scale_b [1, N] or [N] float32 -> [M, N] in ``out_dtype``.
    K must be a multiple of ``config.block_k`` (``fits``)."""
    m, k = a.shape
    n = w.shape[0]
    fma = getattr(config, "fma", False)
    if fma and m > FMA_MAX_M:
        raise ValueError(f"the FMA GEMV takes at most {FMA_MAX_M} rows, got {m}")
    if m > MAX_M or w.shape[1] != k:
        raise ValueError(f"scaled_gemv takes a [M <= {MAX_M}, K] and w [N, K]; got {tuple(a.shape)}, {tuple(w.shape)}")
    if a.stride(1) != 1 or w.stride(1) != 1:
        raise ValueError("scaled_gemv needs unit stride along K")
    if k % config.block_k:
        raise ValueError(f"scaled_gemv needs K ({k}) to be a multiple of block_k ({config.block_k})")
    split = max(1, config.split_k)
    # Each split's K range is a multiple of BLOCK_K, so only the last one is ragged.
    k_per_split = triton.cdiv(triton.cdiv(k, split), config.block_k) * config.block_k
    split = triton.cdiv(k, k_per_split)
    out = torch.empty(split, m, n, dtype=out_dtype if split == 1 else torch.float32, device=a.device)
    has_scale_a = scale_a is not None
    sa = scale_a.reshape(-1) if has_scale_a else scale_b
    _scaled_gemv_kernel[(triton.cdiv(n, config.block_n), split)](
        a, w, sa, scale_b.reshape(-1), out, m, n, k, k_per_split,
        a.stride(0), w.stride(0), 1 if sa.numel() > 1 else 0, out.stride(0), out.stride(1),
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, BLOCK_M=triton.next_power_of_2(m) if fma else MAX_M, HAS_SCALE_A=has_scale_a, FMA=fma,
        COMPUTE_BF16=a.dtype == torch.bfloat16, num_warps=config.num_warps, num_stages=config.num_stages,
        **launch_kwargs(),
    )
    y = out[0] if split == 1 else out.sum(0).to(out_dtype)
    return y if bias is None else y + bias.to(out_dtype)


def fits(k: int, config: GemvConfig) -> bool:
    return k % config.block_k == 0


def quick_configs(m: int) -> list[GemvConfig]:
    """The candidates the first-use tuner times for M rows (few compiles): wide K tiles, since
    8-bit rows are half as many bytes per element as the bf16 GEMV's; for M <= FMA_MAX_M also
    FMA tiles of 8192 products (64 float32 accumulators per thread at 4 warps)."""
    configs: list[GemvConfig] = [
        GemvConfig(64, 256, 1, 4), GemvConfig(32, 512, 2, 4), GemvConfig(64, 512, 1, 4), GemvConfig(32, 512, 4, 4),
        GemvConfig(16, 512, 4, 4), GemvConfig(64, 256, 4, 4), GemvConfig(128, 256, 2, 8), GemvConfig(16, 1024, 8, 4)]
    if m <= FMA_MAX_M:
        rows = triton.next_power_of_2(m)
        for block_k in (256, 512):
            for split in (1, 2, 4):
                configs.append(ScaledGemvConfig(max(4, 8192 // (rows * block_k)), block_k, split, 4, fma=True))
    return configs
