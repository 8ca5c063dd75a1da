"""Weight-only int4/int8 GEMM in Triton, dequantizing inside the kernel (AWQ and GPTQ).

Same signature and semantics as ``wna16_reference.wna16_gemm``; the internal layout (codes
interleaved in tiles of R packed rows) is described there. Every kernel walks K one tile of
R packed rows (R * pack inputs) at a time: it loads the int32 tile q [R, BLOCK_N] once, with
coalesced vector loads along N, and for each field j (a static loop) ``(q >> j*bits) & mask``
*is* the weight sub-tile for the R contiguous inputs kbase + j*R ..: no reshape, no reload,
no layout change of the packed words in the inner loop. Three kinds, picked by M (a table
measured at load, ``wna16_tuning``, else ``pick_config``'s defaults):

  gemv   M = 1 (one row per program): no tensor cores. A [R, BLOCK_N] float32 accumulator
         in the packed words' load layout; per weight one LOP3 (the field masked in place
         and OR-ed into the bits of 2**23), one FADD and one FFMA (``_gemv_tile``); the zero
         point and the scale enter once per group and column, and the sum over R happens
         once, after the K loop. K is split across programs (SPLIT_K) so that a decode step
         puts a few programs on every SM. Its "pair" form (4-bit codes, whole groups per
         K tile) unpacks two codes per LOP3 into packed bf16 and sums four products per
         half in bf16 before float32 (``int4_pairs``): about 3.3 instructions per weight
         against 5.2 (sm_90 SASS), 0.65x the float32 form's time per 8B layer.
  dot    tensor-core tiles: acc[BLOCK_M, BLOCK_N] += x[:, kbase+jR..] @ W_j for each field j
         (R = 16: one K=16 MMA step per field).
  dot_t  the same with the roles swapped, acc^T[BLOCK_N, BLOCK_M] += W_j^T @ x^T: the
         dequantized weight is the MMA's first operand, which Hopper's wgmma may take from
         registers (the second must sit in shared memory), and N fills the MMA's 64-row side
         while a small M only needs 16 columns. Which of the two wins is measured.
  wide / wide_t  the same two forms with one MMA step per packed K tile (R * pack inputs, 128
         at 4 bits with R = 16; or two tiles: ``unroll``) instead of one per field: the tile's
         words are shifted in one broadcast over the fields and the (field, row) axes merged
         into K by a reshape (the interleaved layout makes that the input order), and the
         loads are pipelined. On an H200 (Llama-3.1-8B layers) faster than the dot kinds at
         every M measured (16-256), and than dequantize + cuBLAS on every layer up to M = 64
         and on gate_up and down at 128.
  mma    M <= 8 (4-bit, K tiles inside one group): Dᵀ = Wᵀ·xᵀ on ``mma.sync`` steps in inline
         PTX (``int4_mma``), each lane dequantizing its own A fragment from the words it loaded
         (no shared memory, no layout change), x rows as the MMA's 8 B columns. On an H200 at
         M = 8 0.69-0.73x the time of the best 16-row tile per Llama-3.1-8B layer; at M = 1 about
         level with the paired gemv (BENCHMARKS.md, session 21).
  cuda   M <= 8 (4-bit, bf16 or fp16): the same tensor-core step in CUDA C++ (``cuda_w4a16``,
         ``csrc/w4a16_mma.cu``, built with nvcc at first use): 16-byte weight loads, B fragments
         straight from x, the zero point applied per group on the float32 result, so a weight
         costs about one integer instruction. On an H200 0.78x the mma kind's time per
         Llama-3.1-8B layer at M = 8, 0.95x the paired gemv's at M = 1 (BENCHMARKS.md, session
         24). Offered only where the library builds (an nvcc, ``PAGEDLM_CUDA_KERNELS`` not 0).
  cutlass  M >= 16 (4-bit, bf16 or fp16, Hopper): CUTLASS's mixed-input wgmma GEMM (``cutlass_w4a16``,
         ``csrc/w4a16_cutlass.cu``) over its own copy of the codes, which a layer keeps beside
         the internal layout when the library builds (``wna16.WNA16LinearMethod``). On an H200
         0.91-0.96x bf16 cuBLAS's time per Llama-3.1-8B layer at M = 16-128 and 1.01-1.08x at
         M = 256-2,048, where dequantize + cuBLAS takes 1.2-1.9x (BENCHMARKS.md, session 26).
  dequantize + cuBLAS for large M (compute-bound; the weight traffic is amortised).

Split-K partial sums are float32 [SPLIT_K, M, N], added in a fixed order inside the same
launch by the program that finishes its tile's last slice (a ticket counter per output tile,
``tickets.py``), which also casts and adds the bias: deterministic, and no second kernel. No path synchronises with the
host, so all of them can be captured in a CUDA graph. The dot kinds need R >= 16 (a layer
whose width or group size does not allow it runs the gemv kind or dequantize + cuBLAS).

This module is the host side (kinds, configs, launches); the kernels are in
``triton_wna16_kernels``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from pagedlm.kernels import cuda_w4a16, cutlass_w4a16, wna16_reference, wna16_tuning
from pagedlm.kernels import triton_wna16_kernels as K
from pagedlm.kernels.pdl import launch_kwargs
from pagedlm.kernels.tickets import MAX_TICKETS, ticket_counters

# Defaults when no table was measured at load (wna16_tuning).
_DEQUANT_MIN_M = 256  # at and above: dequantize + cuBLAS
_GEMV_MAX_M = 1  # at and below: the FMA kind (more rows: the tensor-core kinds do less per weight)
_DOT_MIN_R = 16  # tl.dot needs K >= 16 per step
KINDS = ("gemv", "dot", "dot_t", "wide", "wide_t", "mma", "cuda", "cutlass")
_MMA_MAX_M = 8  # the mma kind: x rows are the MMA's 8 B columns
_DEQUANT_MODES = ("int", "half", "f32")  # the DEQUANT constexpr is the index
# the dequant forms each kind has (the tensor-core kinds not named here: _DEQUANT_MODES)
_KIND_DEQUANT_MODES = {"gemv": ("f32", "int", "pair"), "wide": ("int", "half"), "wide_t": ("int", "half"),
                       "mma": ("half",)}


@dataclass(frozen=True, slots=True)
class KernelConfig:
    kind: str  # one of KINDS
    block_m: int
    block_n: int
    split_k: int
    num_warps: int
    num_stages: int
    # K tiles per loop iteration (gemv: their loads are issued together, more bytes in flight;
    # wide: the K of one tensor-core step is unroll * R * pack inputs).
    unroll: int = 1
    # How codes become numbers: "f32" masks each field in place into the bits of 2**23 (one
    # LOP3; see _field_scaled_f32 / _dequant_f32), "half" ORs the shifted field into the bits
    # of 128.0 / 1024.0 in the activation dtype (_codes_minus_zero), "int" converts integers,
    # "pair" (gemv; 4-bit codes, whole groups per K tile) does two codes per instruction in
    # packed bf16 (``int4_pairs.pair_products``).
    # Default "": f32 for gemv, half for the tensor-core kinds (what compiles to fewer
    # instructions per weight on sm_90: the float32 form needs a layout change before the MMA).
    dequant: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kernel kind {self.kind!r} is not one of {KINDS}")
        if self.kind == "mma" and (self.block_m != _MMA_MAX_M or self.block_n != 16 * self.num_warps):
            raise ValueError(f"the mma kind takes up to {_MMA_MAX_M} rows (block_m {_MMA_MAX_M}) and 16 columns "
                             "a warp (block_n 16 * num_warps)")
        if self.kind == "cuda" and (self.block_m != cuda_w4a16.MAX_M or self.block_n != cuda_w4a16.BLOCK_N
                                    or self.num_warps not in cuda_w4a16.WARPS or self.unroll not in cuda_w4a16.UNROLL):
            raise ValueError(f"the cuda kind takes up to {cuda_w4a16.MAX_M} rows (block_m {cuda_w4a16.MAX_M}), "
                             f"{cuda_w4a16.BLOCK_N}-column slices, {cuda_w4a16.WARPS} warps and unroll "
                             f"{cuda_w4a16.UNROLL}")
        if self.kind == "cutlass":
            cutlass_w4a16.tile_of(self.block_n, self.block_m)  # raises for a tile that is not built
        if self.kind not in ("gemv", "mma", "cuda") and self.block_m < 16:
            raise ValueError("the tensor-core kinds need block_m >= 16")
        if self.kind == "gemv" and self.block_m != 1:
            raise ValueError("the gemv kind takes one row per program (block_m 1)")
        if not self.dequant:
            object.__setattr__(self, "dequant", "f32" if self.kind == "gemv" else "half")
        if self.dequant not in _KIND_DEQUANT_MODES.get(self.kind, _DEQUANT_MODES):
            raise ValueError(f"dequant {self.dequant!r} is not available for the {self.kind} kind")


def auto_split_k(tiles_mn: int, k_tiles: int, num_sms: int, waves: float = 2.0, min_tiles: int = 2) -> int:
    """Split K until about ``waves`` programs per SM, keeping >= ``min_tiles`` K tiles per split."""
    return max(1, min(k_tiles // min_tiles, triton.cdiv(int(waves * num_sms), max(1, tiles_mn))))


def layout_rows(k: int, group_size: int, bits: int) -> int:
    """R of the internal layout (``wna16_reference.interleave_rows``)."""
    return wna16_reference.interleave_rows(k, group_size, bits)


def _pow2_at_least(m: int) -> int:
    return 1 << max(0, m - 1).bit_length()


def default_config(m: int, n: int, k: int, bits: int, group_size: int, num_sms: int) -> KernelConfig | None:
    """The kernel for M rows when no table was measured; None: dequantize + cuBLAS (also for
    a few rows of a layer too narrow for the tensor-core kinds: tiny models)."""
    r = layout_rows(k, group_size, bits)
    k_tiles = k // (r * (32 // bits))
    dot_ok = r >= _DOT_MIN_R
    if m <= _GEMV_MAX_M or not dot_ok and m <= 4:
        return KernelConfig("gemv", 1, 128, auto_split_k(triton.cdiv(n, 128) * m, k_tiles, num_sms), 4, 3)
    if not dot_ok or m >= _DEQUANT_MIN_M:
        return None
    if m <= 16:
        return KernelConfig("dot_t", 16, 64, auto_split_k(triton.cdiv(n, 64), k_tiles, num_sms), 4, 3)
    bm, bn = (64, 128) if m <= 64 else (128, 128)
    tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    return KernelConfig("dot", bm, bn, auto_split_k(tiles, k_tiles, num_sms, waves=1.0), 4 if bm <= 64 else 8, 3)


def pick_config(m: int, n: int, k: int, bits: int, group_size: int, num_sms: int,
                row_groups: bool = False) -> KernelConfig | None:
    """The kernel for M rows; None: dequantize + cuBLAS. A table measured at load
    (``wna16_tuning``) for this weight shape wins over the defaults."""
    tuned = wna16_tuning.lookup(m, n, k, bits, group_size, row_groups)
    if tuned is not wna16_tuning.NOT_TUNED:
        return tuned
    return default_config(m, n, k, bits, group_size, num_sms)


def config_fits(cfg: KernelConfig, k: int, group_size: int, bits: int, row_groups: bool = False) -> bool:
    """Whether ``cfg`` can run this layer: the tensor-core kinds need R >= 16; the paired
    gemv takes 4-bit codes, K tiles that lie in one group each, no act-order row groups,
    and a GPU (inline PTX: not the interpreter)."""
    r = layout_rows(k, group_size, bits)
    if cfg.kind == "cutlass":  # N is checked when the layer's operands are made (cutlass_w4a16.layer_fits)
        return bits == 4 and not row_groups and k % cutlass_w4a16.TILE_K == 0 and group_size % cutlass_w4a16.TILE_K == 0
    if cfg.kind == "cuda":  # N is checked at launch (whole 16-byte column quads)
        return cuda_w4a16.layer_fits(k, 4, group_size, bits, row_groups) and r == 16 and not _interpreting()
    if cfg.dequant == "pair":
        return bits == 4 and group_size % (r * 8) == 0 and not row_groups and not _interpreting()
    if cfg.kind == "mma":  # 4-bit, R = 16, K tiles (128 inputs) inside one group; inline PTX
        return (bits == 4 and r == 16 and group_size % 128 == 0 and not row_groups and not _interpreting()
                and cfg.unroll in (1, 2) and (k // 128) % cfg.unroll == 0)
    if cfg.kind in ("wide", "wide_t"):
        return r * (32 // bits) >= _DOT_MIN_R and (k // (r * (32 // bits))) % cfg.unroll == 0
    return cfg.kind == "gemv" or r >= _DOT_MIN_R


def wna16_gemm_with_config(x2d: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                           zeros: torch.Tensor, row_groups: torch.Tensor | None, group_size: int, bits: int,
                           cfg: KernelConfig, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The in-kernel dequantizing GEMM at a given config; x2d [M, K] contiguous rows, scales
    and zeros in x's dtype -> [M, N] in x's dtype (+ bias)."""
    m, k = x2d.shape
    n = qweight.shape[1]
    r = layout_rows(k, group_size, bits)
    if not config_fits(cfg, k, group_size, bits, row_groups is not None):
        raise ValueError(f"{wna16_tuning.describe(cfg)} cannot run this layer (K {k}, group {group_size}, {bits}-bit, "
                         f"{r} interleaved rows{', row groups' if row_groups is not None else ''})")
    if cfg.kind == "cutlass":
        raise ValueError("the cutlass kind runs over a layer's own operands: cutlass_w4a16.gemm")
    if cfg.kind == "cuda":
        return cuda_w4a16.mma(x2d, qweight, scales, zeros, group_size, cfg.num_warps, cfg.unroll, cfg.split_k,
                              ticket_counters(x2d.device, "wna16"), None if bias is None else bias.to(x2d.dtype))
    k_tiles = k // (r * (32 // bits))
    tiles_per_split = triton.cdiv(k_tiles, max(1, cfg.split_k))
    if cfg.kind in ("wide", "wide_t", "mma"):  # a split is whole steps of ``unroll`` tiles
        tiles_per_split = triton.cdiv(tiles_per_split, cfg.unroll) * cfg.unroll
    split_k = triton.cdiv(k_tiles, tiles_per_split)
    out = torch.empty((m, n), device=x2d.device, dtype=x2d.dtype)
    # made on the first (eager) call, before any CUDA graph captures one (tickets.py)
    counters = ticket_counters(x2d.device, "wna16")
    part = torch.empty((split_k, m, n), device=x2d.device, dtype=torch.float32) if split_k > 1 else out
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m), split_k)
    if cfg.kind in ("wide", "wide_t"):  # one axis of output tiles, M varying fastest
        grid = (grid[0] * grid[1], 1, split_k)
    if grid[0] * grid[1] > MAX_TICKETS:
        raise ValueError(f"{grid[0] * grid[1]} output tiles: more than the {MAX_TICKETS} ticket counters")
    has_rg, has_bias = row_groups is not None, bias is not None
    args = (x2d, qweight, scales, zeros, row_groups if has_rg else qweight, bias if has_bias else scales, part,
            counters, out, m, n, x2d.stride(0), k_tiles, tiles_per_split, 0x4B000000)
    common = {"GROUP_SIZE": group_size, "BITS": bits, "R": r, "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n,
              "HAS_ROW_GROUPS": has_rg, "HAS_BIAS": has_bias, "SPLIT_K": split_k, "num_warps": cfg.num_warps}
    if cfg.kind == "mma":
        if m > _MMA_MAX_M or x2d.dtype not in (torch.float16, torch.bfloat16) or x2d.stride(0) % 4:
            raise ValueError(f"the mma kind takes up to {_MMA_MAX_M} rows of 16-bit activations whose row "
                             "stride is a multiple of 4")
        args = (x2d, qweight, scales, zeros, bias if has_bias else scales, part, counters, out, m, n, x2d.stride(0),
                k_tiles, tiles_per_split, 1)
        common = {"GROUP_SIZE": group_size, "WARPS": cfg.num_warps, "UNROLL": cfg.unroll, "HAS_BIAS": has_bias,
                  "SPLIT_K": split_k, "num_warps": cfg.num_warps}
        _launch(K.wna16_mma_kernel, grid, args, common, cfg, (bits, x2d.dtype), IS_FP16=x2d.dtype == torch.float16)
    elif cfg.kind == "gemv":
        _launch(K.wna16_gemv_kernel, grid, args, common, cfg, (bits, x2d.dtype), UNROLL=cfg.unroll,
                MAGIC=cfg.dequant == "f32", PAIR=cfg.dequant == "pair")
    elif cfg.kind in ("wide", "wide_t"):
        _launch(K.wna16_wide_kernel, grid, args, common, cfg, (bits, x2d.dtype), TILES=cfg.unroll,
                SWAP=cfg.kind == "wide_t", MAGIC=cfg.dequant == "half" and _magic_exact(x2d.dtype, bits),
                IS_BF16=x2d.dtype == torch.bfloat16)
    else:
        _launch(K.wna16_dot_kernel, grid, args, common, cfg, (bits, x2d.dtype), SWAP=cfg.kind == "dot_t",
                DEQUANT=_DEQUANT_MODES.index(cfg.dequant if cfg.dequant != "half" or _magic_exact(x2d.dtype, bits)
                                             else "int"), IS_BF16=x2d.dtype == torch.bfloat16)
    return out


def _launch(kernel, grid: tuple[int, int, int], args: tuple, common: dict, cfg: KernelConfig, key: tuple,
            **extra) -> None:
    """Launch at the config's pipeline depth, or shallower where it needs more shared memory
    than the device has (remembered per config)."""
    fit_key = (cfg, *key)
    num_stages = _fitting_stages.get(fit_key, cfg.num_stages)
    while True:
        try:
            stages = ({"STAGES": num_stages} if kernel in (K.wna16_gemv_kernel, K.wna16_wide_kernel, K.wna16_mma_kernel)
                      else {})
            kernel[grid](*args, **common, **extra, **stages, num_stages=num_stages, **launch_kwargs())
            return
        except triton.runtime.errors.OutOfResources:
            if num_stages <= 1:
                raise
            num_stages -= 1
            _fitting_stages[fit_key] = num_stages


# (config, bits, dtype) -> the pipeline depth that fits the device (only where the asked one did not).
_fitting_stages: dict[tuple, int] = {}


def wna16_dequantize(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                     row_groups: torch.Tensor | None, group_size: int, bits: int) -> torch.Tensor:
    """Same as ``wna16_reference.wna16_dequantize``: [K, N] in the scales' dtype."""
    k, n = qweight.shape[0] * (32 // bits), qweight.shape[1]
    r = layout_rows(k, group_size, bits)
    out = torch.empty((k, n), device=qweight.device, dtype=scales.dtype)
    block_n = 256 if r >= 8 else 1024 // r
    grid = (k // (r * (32 // bits)), triton.cdiv(n, block_n))
    K.wna16_dequant_kernel[grid](qweight, scales, zeros, row_groups if row_groups is not None else qweight, out, n,
                                GROUP_SIZE=group_size, BITS=bits, R=r, BLOCK_N=block_n,
                                HAS_ROW_GROUPS=row_groups is not None, MAGIC=_magic_exact(scales.dtype, bits),
                                IS_BF16=scales.dtype == torch.bfloat16, num_warps=4, **launch_kwargs())
    return out


def wna16_gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               perm: torch.Tensor | None, row_groups: torch.Tensor | None, group_size: int, bits: int,
               bias: torch.Tensor | None = None, cutlass_ops: tuple | None = None) -> torch.Tensor:
    """y = x[..., perm] @ W (+ bias); x: [..., K] -> [..., N] in x's dtype. ``cutlass_ops``: the
    layer's operands for the cutlass kind (``cutlass_w4a16.prepare``), where it keeps them."""
    if x.dtype not in (torch.float16, torch.bfloat16) or x.device.type == "cpu" and not _interpreting():
        return wna16_reference.wna16_gemm(x, qweight, scales, zeros, perm, row_groups, group_size, bits, bias)
    lead_shape = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])
    if perm is not None:
        x2d = x2d.index_select(1, perm)
    x2d = x2d.contiguous()
    cfg = pick_config(x2d.shape[0], qweight.shape[1], x2d.shape[1], bits, group_size, _sms(x2d.device),
                      row_groups is not None)
    if cfg is not None and cfg.kind == "cutlass":
        if cutlass_ops is not None and x2d.dtype == cutlass_ops[1].dtype:
            y = cutlass_w4a16.gemm(x2d, *cutlass_ops, group_size, cutlass_w4a16.tile_of(cfg.block_n, cfg.block_m),
                                   bias)
            return y.reshape(*lead_shape, y.shape[-1])
        # measured on a layer of this shape that keeps the kernel's operands; this one does not
        cfg = default_config(x2d.shape[0], qweight.shape[1], x2d.shape[1], bits, group_size, _sms(x2d.device))
    if cfg is not None and cfg.kind == "cuda" and not cuda_w4a16.operands_fit(
            x2d, qweight, scales.to(x.dtype), zeros.to(x.dtype), None if bias is None else bias.to(x.dtype)):
        # measured on this shape's layers, but these operands (a view, another dtype) do not fit it
        cfg = default_config(x2d.shape[0], qweight.shape[1], x2d.shape[1], bits, group_size, _sms(x2d.device))
    if cfg is None:
        w = wna16_dequantize(qweight, scales, zeros, row_groups, group_size, bits).to(x.dtype)
        y = x2d @ w if bias is None else torch.addmm(bias.to(x.dtype), x2d, w)
    else:
        y = wna16_gemm_with_config(x2d, qweight, scales.to(x.dtype), zeros.to(x.dtype), row_groups, group_size,
                                   bits, cfg, bias)
    return y.reshape(*lead_shape, y.shape[-1])


def _magic_exact(dtype: torch.dtype, bits: int) -> bool:
    """Whether base + code and base + zero are exact in ``dtype`` (bf16: integers to 256)."""
    return dtype == torch.float16 or (dtype == torch.bfloat16 and bits == 4)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_SM_COUNT: dict[int, int] = {}


def _sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132  # the interpreter: any count exercises the split path
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx]
