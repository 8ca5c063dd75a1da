"""PyTorch reference for the weight-only int4/int8 GEMM (AWQ and GPTQ, "WNA16").

Both checkpoint formats are repacked at load time into one internal layout, which this
module and ``triton_wna16`` share (same signatures; this is the CPU path and the oracle):

  qweight  int32 [K // pack, N]   codes packed along the input dim K, unsigned, pack = 32 // bits
                                  codes per word, *interleaved* in tiles of R packed rows:
                                  field j (bits j*bits ..) of packed row r holds input row
                                      k = (r // R) * (R * pack) + j * R + (r % R)
                                  so one loaded tile q [R, N] gives, for each j, the weight rows
                                  kbase + j*R .. kbase + j*R + R - 1 as ``(q >> j*bits) & mask``
                                  with no reshape (the kernels' inner loop); R = 1 is the plain
                                  sequential packing (row k in word k // pack, field k % pack)
  R        ``interleave_rows(K, group_size, bits)``: the largest of 16, 8, 4, 2, 1 that
                                  tiles K (K % (R * pack) == 0) and divides the group size, so
                                  each R-row sub-tile lies in one group (one scale row)
  scales   act dtype [G, N]        one scale per (group, output column), G = K // group_size
  zeros    act dtype [G, N]        the zero point as a number (already offset-corrected),
                                  so  W[k, n] = (code - zeros[k // gs, n]) * scales[k // gs, n]
  perm     int32 [K] or None       act-order (GPTQ desc_act): input k of the repacked weight is
                                  input perm[k] of the original layer, so x is gathered first
  row_groups int32 [K] or None     the group of each row when rows are not whole contiguous
                                  groups of ``group_size`` (a row-parallel shard of an act-order
                                  layer); None means group = k // group_size

R is derived from the shapes (never stored), so every holder of (qweight, group_size, bits)
agrees on it. Codes below 256 and their differences with the zero point are exact in
fp16/bf16, so the dequantized weight is the checkpoint's (code - zero) * scale rounded once,
as in AutoAWQ's and AutoGPTQ's own torch paths.
"""

from __future__ import annotations

import torch

# 16 rows: a K=16 tensor-core step per code field, and 16 * pack inputs (128 at 4 bits, one
# usual group) per loaded tile.
MAX_INTERLEAVE = 16


def interleave_rows(k: int, group_size: int, bits: int) -> int:
    """R of the internal layout for an input width K (see the module docstring)."""
    pack = 32 // bits
    for rows in (16, 8, 4, 2):
        if k % (rows * pack) == 0 and group_size % rows == 0:
            return rows
    return 1


def _sequential_order(k: int, pack: int, interleave: int, device: torch.device) -> torch.Tensor:
    """order[s] = the input row whose code sits at sequential slot s (word s // pack, field s % pack),
    made on ``device`` (no host copy: a CUDA graph capture of the GEMM forbids one)."""
    s = torch.arange(k, device=device)
    r, j = s // pack, s % pack
    return (r // interleave) * (interleave * pack) + j * interleave + r % interleave


def unpack_codes(qweight: torch.Tensor, bits: int, interleave: int = 1) -> torch.Tensor:
    """int32 [K // pack, N] -> int32 [K, N] unsigned codes, in input-row order."""
    shifts = torch.arange(0, 32, bits, device=qweight.device, dtype=torch.int32)  # [32 // bits]
    codes = (qweight[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)  # [K/pack, pack, N]
    codes = codes.reshape(-1, qweight.shape[1])
    if interleave == 1:
        return codes
    order = _sequential_order(codes.shape[0], 32 // bits, interleave, qweight.device)
    out = torch.empty_like(codes)
    out[order] = codes
    return out


def pack_codes(codes: torch.Tensor, bits: int, interleave: int = 1) -> torch.Tensor:
    """int [K, N] codes in [0, 2**bits) -> int32 [K // pack, N] (inverse of ``unpack_codes``)."""
    pack = 32 // bits
    k, n = codes.shape
    if k % (pack * interleave):
        raise ValueError(f"input size {k} is not a multiple of {pack * interleave} ({bits}-bit codes per int32, "
                         f"{interleave} interleaved rows)")
    if interleave != 1:
        codes = codes[_sequential_order(k, pack, interleave, codes.device)]
    shifts = torch.arange(0, 32, bits, device=codes.device, dtype=torch.int64)
    grouped = codes.to(torch.int64).reshape(k // pack, pack, n) << shifts[None, :, None]
    packed = grouped.sum(dim=1)  # disjoint bit ranges: the sum is the bitwise or
    # Two's-complement wrap into int32 (bit 31 set -> negative), as the checkpoints store it.
    return (packed - ((packed >> 31) & 1) * (1 << 32)).to(torch.int32)


def pack_internal(codes: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Codes [K, N] -> the internal qweight (interleaved as ``interleave_rows`` says)."""
    return pack_codes(codes, bits, interleave_rows(codes.shape[0], group_size, bits))


def wna16_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     row_groups: torch.Tensor | None, group_size: int, bits: int) -> torch.Tensor:
    """The dense weight, transposed for x @ W: [K, N] in the scales' dtype."""
    k = qweight.shape[0] * (32 // bits)
    codes = unpack_codes(qweight, bits, interleave_rows(k, group_size, bits))  # [K, N]
    if row_groups is not None:
        group_ids = row_groups.long()
    else:
        group_ids = torch.arange(codes.shape[0], device=codes.device) // group_size
    return (codes.to(scales.dtype) - zeros[group_ids]) * scales[group_ids]


def wna16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               perm: torch.Tensor | None, row_groups: torch.Tensor | None, group_size: int, bits: int,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x[..., perm] @ W (+ bias); x: [..., K] -> [..., N] in x's dtype."""
    if perm is not None:
        x = x.index_select(-1, perm)
    w = wna16_dequantize(qweight, scales, zeros, row_groups, group_size, bits).to(x.dtype)
    y = x @ w
    return y + bias if bias is not None else y
