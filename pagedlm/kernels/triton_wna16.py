"""Weight-only int4/int8 GEMM in Triton, dequantizing inside the kernel (AWQ and GPTQ).

Same signature and semantics as ``wna16_reference.wna16_gemm`` (the internal layout is
described there). Three paths, picked by the number of rows M:

  M <= 16   split-K GEMV-like path: a 16-row tile, the K loop cut into SPLIT_K chunks so
            that a decode step puts a few programs on every SM; partial sums in float32 are
            added by one ``sum`` (deterministic, no atomics)
  M <= _DEQUANT_MIN_M  tiled path: [BLOCK_M, BLOCK_N] tiles, whole K per program
  larger M  dequantize the weight to the activation dtype once (a Triton kernel) and call
            cuBLAS: at large M the GEMM is compute-bound and cuBLAS beats a dequantizing
            tile loop, while the extra weight traffic is amortised over the rows

No path synchronises with the host, so all of them can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedlm.kernels import wna16_reference, wna16_tuning

# Defaults when no table was measured at load (wna16_tuning): at and above this many rows
# the dequantize + cuBLAS path is taken (compute-bound GEMMs, where cuBLAS wins).
_DEQUANT_MIN_M = 256
_SMALL_M = 16


@dataclass(frozen=True, slots=True)
class KernelConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int
    num_stages: int
    # Load each packed word once and unpack in registers (shift + reshape) instead of
    # loading it once per code it holds (the repeats hit L1): fewer load instructions, at
    # the price of a register reshuffle. benchmarks/gpu_w4a16.py times both.
    reshape_unpack: bool = False
    # Build (code - zero) from float bits instead of converting ints (see _codes_minus_zero).
    magic_dequant: bool = True


@triton.jit
def _codes_minus_zero(codes, z, MAGIC: tl.constexpr, IS_BF16: tl.constexpr):
    """(code - zero) in z's dtype, exact. With MAGIC the code is OR-ed into the bits of 128.0
    (bf16) or 1024.0 (fp16), which gives 128 + code / 1024 + code with no int-to-float
    conversion (a quarter-rate instruction that would bound a decode GEMV); subtracting
    base + zero is exact since both are integers the format represents. The host only asks
    for it where they are (4-bit codes in bf16, up to 8-bit in fp16)."""
    if MAGIC:
        if IS_BF16:
            diff = (codes | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True) - (z + 128.0)
        else:
            diff = (codes | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - (z + 1024.0)
    else:
        diff = codes.to(z.dtype) - z
    return diff


@triton.jit
def _wna16_gemm_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr, out_ptr,
    M, N, K, stride_xm, k_per_split,
    GROUP_SIZE: tl.constexpr, BITS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_ALIGNED: tl.constexpr, HAS_ROW_GROUPS: tl.constexpr, RESHAPE_UNPACK: tl.constexpr,
    MAGIC: tl.constexpr, IS_BF16: tl.constexpr,
):
    """out[pid_k, m, n] = sum over this split's k of x[m, k] * W[k, n] (float32)."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < k_end
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + k[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        if RESHAPE_UNPACK:
            # k0 is a multiple of BLOCK_K (and so of PACK): rows k0/PACK .. + BLOCK_K/PACK.
            rows = k0 // PACK + tl.arange(0, BLOCK_K // PACK)
            packed = tl.load(qw_ptr + rows[:, None].to(tl.int64) * N + offs_n[None, :],
                             mask=(rows[:, None] * PACK < k_end) & mask_n[None, :], other=0)
            shifts = tl.arange(0, PACK) * BITS
            codes = (packed[:, None, :] >> shifts[None, :, None]) & MASK  # [BLOCK_K/PACK, PACK, BLOCK_N]
            codes = tl.reshape(codes, (BLOCK_K, BLOCK_N))
        else:
            # Each int32 is read PACK times (once per code it holds); the repeats hit L1.
            packed = tl.load(qw_ptr + (k[:, None] // PACK).to(tl.int64) * N + offs_n[None, :],
                             mask=mask_k[:, None] & mask_n[None, :], other=0)
            codes = (packed >> ((k[:, None] % PACK) * BITS)) & MASK
        if GROUP_ALIGNED:
            # The whole tile lies in one group: one scale / zero row, broadcast over k.
            g = k0 // GROUP_SIZE
            s = tl.load(s_ptr + g * N + offs_n, mask=mask_n, other=0.0)[None, :]
            z = tl.load(z_ptr + g * N + offs_n, mask=mask_n, other=0.0)[None, :]
        else:
            if HAS_ROW_GROUPS:
                g = tl.load(g_ptr + k, mask=mask_k, other=0)
            else:
                g = k // GROUP_SIZE
            g_off = g[:, None].to(tl.int64) * N + offs_n[None, :]
            s = tl.load(s_ptr + g_off, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            z = tl.load(z_ptr + g_off, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        w = _codes_minus_zero(codes, z, MAGIC, IS_BF16) * s
        acc += tl.dot(x, w.to(x.dtype))
    out_off = pid_k.to(tl.int64) * M * N + offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _wna16_dequant_kernel(
    qw_ptr, s_ptr, z_ptr, g_ptr, out_ptr, N, K,
    GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_ROW_GROUPS: tl.constexpr, MAGIC: tl.constexpr, IS_BF16: tl.constexpr,
):
    """out[k, n] = (code - zero) * scale: the dense [K, N] weight in the scales' dtype."""
    PACK: tl.constexpr = 32 // BITS
    MASK: tl.constexpr = (1 << BITS) - 1
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (k[:, None] < K) & (n[None, :] < N)
    packed = tl.load(qw_ptr + (k[:, None] // PACK).to(tl.int64) * N + n[None, :], mask=mask, other=0)
    codes = (packed >> ((k[:, None] % PACK) * BITS)) & MASK
    if HAS_ROW_GROUPS:
        g = tl.load(g_ptr + k, mask=k < K, other=0)
    else:
        g = k // GROUP_SIZE
    g_off = g[:, None].to(tl.int64) * N + n[None, :]
    s = tl.load(s_ptr + g_off, mask=mask, other=0.0)
    z = tl.load(z_ptr + g_off, mask=mask, other=0.0)
    w = _codes_minus_zero(codes, z, MAGIC, IS_BF16) * s
    tl.store(out_ptr + k[:, None].to(tl.int64) * N + n[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def auto_split_k(n: int, k: int, block_n: int, block_k: int, num_sms: int) -> int:
    """Split K until every SM has ~2 programs, keeping at least 4 K tiles per program."""
    n_tiles = triton.cdiv(n, block_n)
    max_split = max(1, k // (4 * block_k))
    return max(1, min(max_split, triton.cdiv(2 * num_sms, n_tiles)))


def pick_config(m: int, n: int, k: int, bits: int, group_size: int, num_sms: int) -> KernelConfig | None:
    """The tile config for M rows; None: dequantize + cuBLAS. A table measured at load
    (``wna16_tuning``) for this weight shape wins over these defaults."""
    tuned = wna16_tuning.lookup(m, n, k, bits, group_size)
    if tuned is not wna16_tuning.NOT_TUNED:
        return tuned
    if m <= _SMALL_M:
        return KernelConfig(16, 64, 128, auto_split_k(n, k, 64, 128, num_sms), num_warps=4, num_stages=4)
    if m >= _DEQUANT_MIN_M:
        return None
    if m <= 64:
        return KernelConfig(64, 128, 64, 1, num_warps=4, num_stages=4)
    return KernelConfig(128, 128, 64, 1, num_warps=8, num_stages=3)


def wna16_gemm_with_config(x2d: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                           zeros: torch.Tensor, row_groups: torch.Tensor | None, group_size: int, bits: int,
                           cfg: KernelConfig) -> torch.Tensor:
    """The in-kernel dequantizing GEMM at a given tile config; x2d: [M, K] contiguous rows."""
    m, k = x2d.shape
    n = qweight.shape[1]
    # A split must start on a tile boundary, and with aligned groups on a group boundary.
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split_k = triton.cdiv(k, k_per_split)
    out_dtype = x2d.dtype if split_k == 1 else torch.float32
    out = torch.empty((split_k, m, n), device=x2d.device, dtype=out_dtype)
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m), split_k)
    has_row_groups = row_groups is not None
    fit_key = (cfg, bits, x2d.dtype)
    num_stages = _fitting_stages.get(fit_key, cfg.num_stages)
    while True:
        try:
            _wna16_gemm_kernel[grid](
                x2d, qweight, scales, zeros, row_groups if has_row_groups else qweight, out,
                m, n, k, x2d.stride(0), k_per_split,
                GROUP_SIZE=group_size, BITS=bits, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                BLOCK_K=cfg.block_k, GROUP_ALIGNED=not has_row_groups and group_size % cfg.block_k == 0,
                HAS_ROW_GROUPS=has_row_groups, RESHAPE_UNPACK=cfg.reshape_unpack,
                MAGIC=cfg.magic_dequant and _magic_exact(x2d.dtype, bits), IS_BF16=x2d.dtype == torch.bfloat16,
                num_warps=cfg.num_warps, num_stages=num_stages,
            )
            break
        except triton.runtime.errors.OutOfResources:
            # Shared memory grows with the pipeline depth (and, for some variants, with the
            # dtype and bit width): a config that does not fit this device runs shallower.
            if num_stages <= 1:
                raise
            num_stages -= 1
            _fitting_stages[fit_key] = num_stages
    return out[0] if split_k == 1 else out.sum(dim=0).to(x2d.dtype)


# (config, bits, dtype) -> the pipeline depth that fits the device (only where the asked one did not).
_fitting_stages: dict[tuple[KernelConfig, int, torch.dtype], int] = {}


def wna16_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     row_groups: torch.Tensor | None, group_size: int, bits: int) -> torch.Tensor:
    """Same as ``wna16_reference.wna16_dequantize``: [K, N] in the scales' dtype."""
    k, n = qweight.shape[0] * (32 // bits), qweight.shape[1]
    out = torch.empty((k, n), device=qweight.device, dtype=scales.dtype)
    grid = (triton.cdiv(k, 64), triton.cdiv(n, 128))
    _wna16_dequant_kernel[grid](qweight, scales, zeros, row_groups if row_groups is not None else qweight, out,
                                n, k, GROUP_SIZE=group_size, BITS=bits, BLOCK_K=64, BLOCK_N=128,
                                HAS_ROW_GROUPS=row_groups is not None, MAGIC=_magic_exact(scales.dtype, bits),
                                IS_BF16=scales.dtype == torch.bfloat16, num_warps=4)
    return out


def wna16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               perm: torch.Tensor | None, row_groups: torch.Tensor | None, group_size: int, bits: int,
               bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x[..., perm] @ W (+ bias); x: [..., K] -> [..., N] in x's dtype."""
    if x.dtype not in (torch.float16, torch.bfloat16) or x.device.type == "cpu" and not _interpreting():
        return wna16_reference.wna16_gemm(x, qweight, scales, zeros, perm, row_groups, group_size, bits, bias)
    lead_shape = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])
    if perm is not None:
        x2d = x2d.index_select(1, perm)
    x2d = x2d.contiguous()
    cfg = pick_config(x2d.shape[0], qweight.shape[1], x2d.shape[1], bits, group_size, _sms(x2d.device))
    if cfg is None:
        y = x2d @ wna16_dequantize(qweight, scales, zeros, row_groups, group_size, bits).to(x.dtype)
    else:
        y = wna16_gemm_with_config(x2d, qweight, scales.to(x.dtype), zeros.to(x.dtype), row_groups, group_size,
                                   bits, cfg)
    if bias is not None:
        y = y + bias
    return y.reshape(*lead_shape, y.shape[-1])


def _magic_exact(dtype: torch.dtype, bits: int) -> bool:
    """Whether base + code and base + zero are exact in ``dtype`` (bf16: integers to 256)."""
    return dtype == torch.float16 or (dtype == torch.bfloat16 and bits == 4)


def _interpreting() -> bool:
    import os  # noqa: PLC0415 - only the CPU interpreter (a debugging aid) reaches here

    return os.environ.get("TRITON_INTERPRET") == "1"


_SM_COUNT: dict[int, int] = {}


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter: any count exercises the split path
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = _num_sms(torch.device("cuda", idx))
    return _SM_COUNT[idx]
