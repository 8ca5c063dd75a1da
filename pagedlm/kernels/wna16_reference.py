"""PyTorch reference for the weight-only int4/int8 GEMM (AWQ and GPTQ, "WNA16").

Both checkpoint formats are repacked at load time into one internal layout, which this
module and ``triton_wna16`` share (same signatures; this is the CPU path and the oracle):

  qweight  int32 [K // pack, N]   codes packed along the input dim K: the code of (k, n)
                                  sits in row k // pack at bit (k % pack) * bits, unsigned,
                                  sequential order (pack = 32 // bits)
  scales   act dtype [G, N]        one scale per (group, output column), G = K // group_size
  zeros    act dtype [G, N]        the zero point as a number (already offset-corrected),
                                  so  W[k, n] = (code - zeros[k // gs, n]) * scales[k // gs, n]
  perm     int32 [K] or None       act-order (GPTQ desc_act): input k of the repacked weight is
                                  input perm[k] of the original layer, so x is gathered first
  row_groups int32 [K] or None     the group of each row when rows are not whole contiguous
                                  groups of ``group_size`` (a row-parallel shard of an act-order
                                  layer); None means group = k // group_size

Codes below 256 and their differences with the zero point are exact in fp16/bf16, so the
dequantized weight is the checkpoint's (code - zero) * scale rounded once, as in AutoAWQ's
and AutoGPTQ's own torch paths.
"""

from __future__ import annotations

import torch


def unpack_codes(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [K // pack, N] -> int32 [K, N] unsigned codes (internal layout, sequential)."""
    shifts = torch.arange(0, 32, bits, device=qweight.device, dtype=torch.int32)  # [32 // bits]
    codes = (qweight[:, None, :] >> shifts[None, :, None]) & ((1 << bits) - 1)  # [K/pack, pack, N]
    return codes.reshape(-1, qweight.shape[1])


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """int [K, N] codes in [0, 2**bits) -> int32 [K // pack, N] (inverse of ``unpack_codes``)."""
    pack = 32 // bits
    k, n = codes.shape
    if k % pack:
        raise ValueError(f"input size {k} is not a multiple of {pack} ({bits}-bit codes per int32)")
    shifts = torch.arange(0, 32, bits, device=codes.device, dtype=torch.int64)
    grouped = codes.to(torch.int64).reshape(k // pack, pack, n) << shifts[None, :, None]
    packed = grouped.sum(dim=1)  # disjoint bit ranges: the sum is the bitwise or
    # Two's-complement wrap into int32 (bit 31 set -> negative), as the checkpoints store it.
    return (packed - ((packed >> 31) & 1) * (1 << 32)).to(torch.int32)


def wna16_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     row_groups: torch.Tensor | None, group_size: int, bits: int) -> torch.Tensor:
    """The dense weight, transposed for x @ W: [K, N] in the scales' dtype."""
    codes = unpack_codes(qweight, bits)  # [K, N]
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
