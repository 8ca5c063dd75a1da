"""Host side of the CUDA 4-bit decode GEMM (``csrc/w4a16_mma.cu``): the W4A16 "cuda" kind of
``triton_wna16`` for 1-8 rows of bf16 or fp16 activations on tensor-core steps, same semantics as
``wna16_reference.wna16_gemm`` on the internal layout with 16 interleaved rows (the zero point
applied per group on the float32 result).

A launch takes ``warps`` per block (4 or 8) over one 32-column slice, each warp loading
``unroll`` K tiles of 128 inputs ahead of the ones it computes, and ``split_k`` K slices
(blocks along grid.y). It goes through ctypes on the current stream, so CUDA graphs capture it
like any other kernel; where the library cannot be built (``cuda_build``) the kind is simply not
offered.
"""

from __future__ import annotations

import torch

from pagedlm.kernels import cuda_build, pdl

NAME = "w4a16_mma"
MAX_M = 8
WARPS = (4, 8)
UNROLL = (1, 2, 4)
BLOCK_N = 32

DTYPES = (torch.bfloat16, torch.float16)  # the activations', scales', zeros', bias' and output's dtype

_KERNEL = cuda_build.Kernel(NAME, "pagedlm_w4a16_mma", 8, 11, "pagedlm_w4a16_error_string")
_function = _KERNEL.function
use_build = _KERNEL.use_build


def available(device: torch.device | None = None) -> bool:
    """Whether the kernel is built (or buildable) for ``device`` (default: the current GPU)."""
    return _KERNEL.available(device)


def layer_fits(k: int, n: int, group_size: int, bits: int, row_groups: bool) -> bool:
    """The layers the kernel takes: 4-bit, K in whole 128-input tiles inside groups, N in
    whole 16-byte column quads, no act-order row groups."""
    return bits == 4 and k % 128 == 0 and group_size % 128 == 0 and n % 4 == 0 and not row_groups


def operands_fit(x2d: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 bias: torch.Tensor | None = None) -> bool:
    """Whether the operands are laid out as the kernel reads them: contiguous, the words 16-byte
    aligned, scales / zeros / activation rows 8-byte aligned, bf16 or fp16 throughout."""
    tensors = (x2d, qweight, scales, zeros) + ((bias,) if bias is not None else ())
    return (x2d.dim() == 2 and x2d.stride(1) == 1 and x2d.stride(0) % 4 == 0 and x2d.data_ptr() % 8 == 0
            and qweight.data_ptr() % 16 == 0 and scales.data_ptr() % 8 == 0 and zeros.data_ptr() % 8 == 0
            and all(t.is_contiguous() for t in tensors[1:]) and x2d.dtype in DTYPES
            and all(t.dtype == x2d.dtype for t in tensors if t is not qweight))


def split_plan(k: int, split_k: int) -> tuple[int, int]:
    """(split, K tiles per split) for about ``split_k`` slices of whole K tiles."""
    k_tiles = k // 128
    per_split = -(-k_tiles // max(1, min(split_k, k_tiles)))
    return -(-k_tiles // per_split), per_split


def mma(x2d: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
        warps: int, unroll: int, split_k: int, counters: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] = x2d [M, K] @ W (+ bias) in x2d's dtype (bf16 or fp16), M <= 8; ``counters`` the
    zeroed ticket counters."""
    m, k = x2d.shape
    n = qweight.shape[1]
    fn = _function(x2d.device)
    if fn is None:
        raise RuntimeError("the CUDA W4A16 kernel is not available (no nvcc, or PAGEDLM_CUDA_KERNELS=0)")
    if not 1 <= m <= MAX_M or x2d.dtype not in DTYPES:
        raise ValueError(f"the cuda kind takes 1-{MAX_M} rows of bf16 or fp16 activations (got {m} of {x2d.dtype})")
    if warps not in WARPS or unroll not in UNROLL:
        raise ValueError(f"the cuda kind takes {WARPS} warps and unroll {UNROLL} (got {warps}, {unroll})")
    if not layer_fits(k, n, group_size, 4, False):
        raise ValueError(f"the cuda kind cannot run K {k}, N {n}, group {group_size}")
    if not operands_fit(x2d, qweight, scales, zeros, bias):
        raise ValueError("the cuda kind needs contiguous, aligned operands (activation rows 8-byte aligned) and "
                         "scales, zeros and bias in the activations' dtype")
    split, per_split = split_plan(k, split_k)
    out = torch.empty((m, n), device=x2d.device, dtype=x2d.dtype)
    part = torch.empty((split, m, n), device=x2d.device, dtype=torch.float32) if split > 1 else out
    err = fn(x2d.data_ptr(), qweight.data_ptr(), scales.data_ptr(), zeros.data_ptr(),
             bias.data_ptr() if bias is not None else None, part.data_ptr(), counters.data_ptr(), out.data_ptr(),
             m, n, k, x2d.stride(0), group_size, split, per_split, warps, unroll, int(x2d.dtype == torch.float16),
             int(pdl.enabled()),
             torch.cuda.current_stream(x2d.device).cuda_stream)
    cuda_build.check_launch(fn, err, "CUDA W4A16 kernel")
    return out
