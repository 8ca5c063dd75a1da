"""Host side of the CUDA 8-bit decode GEMM (``csrc/w8a8_mma.cu``): activation codes [M <= 8, K]
times weight codes [N, K], both int8 or both fp8 e4m3, on tensor-core steps with no per-weight
conversion; y = (x . w) * scale_x * scale_w (+ bias). One of the decode candidates the 8-bit
GEMV tuner (``scaled_gemv``) times, wherever the library builds (``cuda_build``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedlm.kernels import cuda_build, pdl

NAME = "w8a8_mma"
MAX_M = 8
WARPS = (4, 8)
UNROLL = (1, 2)
BLOCK_N = 16
_OUT_KINDS = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}

_KERNEL = cuda_build.Kernel(NAME, "pagedlm_w8a8_mma", 8, 14, "pagedlm_w8a8_error_string")
_function = _KERNEL.function


@dataclass(frozen=True, slots=True)
class CudaW8A8Config:
    """warps per block (4, 8) over one 16-column slice; 128-input chunks each warp loads ahead
    (unroll 1, 2); split-K slices."""
    warps: int = 8
    unroll: int = 1
    split_k: int = 1


def quick_configs(m: int) -> list[CudaW8A8Config]:
    """The candidates the 8-bit tuner times (M <= 8)."""
    if m > MAX_M:
        return []
    return [CudaW8A8Config(8, 1, 1), CudaW8A8Config(4, 1, 1), CudaW8A8Config(8, 1, 2), CudaW8A8Config(4, 1, 4),
            CudaW8A8Config(8, 2, 1)]


def available(device: torch.device | None = None) -> bool:
    """Whether the kernel is built (or buildable) for ``device`` (default: the current GPU)."""
    return _KERNEL.available(device)


def fits(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor | None, scale_w: torch.Tensor | None,
         out_dtype: torch.dtype) -> bool:
    """Whether the kernel takes these operands: codes of one 8-bit type (int8 or e4m3), M <= 8,
    K a multiple of 128, 16-byte aligned rows, float32 scales (per row / column or one)."""
    m, k = x.shape
    n = w.shape[0]
    return (x.dtype == w.dtype and x.dtype in (torch.int8, torch.float8_e4m3fn) and 1 <= m <= MAX_M
            and w.shape[1] == k and k % 128 == 0 and x.stride(1) == 1 and w.stride(1) == 1
            and x.stride(0) % 16 == 0 and w.stride(0) % 16 == 0 and x.data_ptr() % 16 == 0
            and w.data_ptr() % 16 == 0 and out_dtype in _OUT_KINDS
            and scale_x is not None and scale_x.dtype == torch.float32 and scale_x.numel() in (1, m)
            and scale_x.is_contiguous()
            and scale_w is not None and scale_w.dtype == torch.float32 and scale_w.numel() in (1, n)
            and scale_w.is_contiguous())


def gemm(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor, scale_w: torch.Tensor, out_dtype: torch.dtype,
         bias: torch.Tensor | None, config: CudaW8A8Config, counters: torch.Tensor) -> torch.Tensor:
    """(x @ w.T) * scale_x * scale_w (+ bias) -> [M, N] in ``out_dtype``."""
    fn = _function(x.device)
    if fn is None:
        raise RuntimeError("the CUDA W8A8 kernel is not available (no nvcc, or PAGEDLM_CUDA_KERNELS=0)")
    if not fits(x, w, scale_x, scale_w, out_dtype):
        raise ValueError("the CUDA W8A8 kernel takes int8 or e4m3 codes of one type, M <= 8, K a multiple of 128, "
                         "16-byte aligned rows and float32 scales")
    if config.warps not in WARPS or config.unroll not in UNROLL:
        raise ValueError(f"the CUDA W8A8 kernel takes {WARPS} warps and unroll {UNROLL}")
    m, k = x.shape
    n = w.shape[0]
    bias_dtype = torch.bfloat16 if out_dtype == torch.float32 else out_dtype
    if bias is not None:
        bias = bias.to(bias_dtype).contiguous()
    chunks = k // 128
    per_split = -(-chunks // max(1, min(config.split_k, chunks)))
    split = -(-chunks // per_split)
    out = torch.empty((m, n), device=x.device, dtype=out_dtype)
    part = torch.empty((split, m, n), device=x.device, dtype=torch.float32) if split > 1 else out
    err = fn(x.data_ptr(), w.data_ptr(), scale_x.data_ptr(), scale_w.data_ptr(),
             bias.data_ptr() if bias is not None else None, part.data_ptr(), counters.data_ptr(), out.data_ptr(),
             m, n, k, x.stride(0), w.stride(0), int(scale_x.numel() > 1), int(scale_w.numel() > 1), split, per_split,
             config.warps, config.unroll, int(x.dtype == torch.float8_e4m3fn), _OUT_KINDS[out_dtype],
             int(pdl.enabled()), torch.cuda.current_stream(x.device).cuda_stream)
    cuda_build.check_launch(fn, err, "CUDA W8A8 kernel")
    return out
