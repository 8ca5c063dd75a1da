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
         loads are pipelined. Faster than the dot kinds at every M measured (16-256), and
         than dequantize + cuBLAS up to M = 128 on most 8B layers.
  dequantize + cuBLAS for large M (compute-bound; the weight traffic is amortised).

Split-K partial sums are float32 [SPLIT_K, M, N], added in a fixed order inside the same
launch by the program that finishes its tile's last slice (a ticket counter per output tile,
``tickets.py``), which also casts and adds the bias: deterministic, and no second kernel. No path synchronises with the
host, so all of them can be captured in a CUDA graph. The dot kinds need R >= 16 (a layer
whose width or group size does not allow it runs the gemv kind or dequantize + cuBLAS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedlm.kernels import wna16_reference, wna16_tuning
from pagedlm.kernels.int4_pairs import half_pair, pair_products
from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue
from pagedlm.kernels.tickets import MAX_TICKETS, ticket_counters

# Defaults when no table was measured at load (wna16_tuning).
_DEQUANT_MIN_M = 256  # at and above: dequantize + cuBLAS
_GEMV_MAX_M = 1  # at and below: the FMA kind (more rows: the tensor-core kinds do less per weight)
_DOT_MIN_R = 16  # tl.dot needs K >= 16 per step
_F32_MAGIC = tl.constexpr(8388608.0)  # 2**23: the float whose low mantissa bits take a code
KINDS = ("gemv", "dot", "dot_t", "wide", "wide_t")
_DEQUANT_MODES = ("int", "half", "f32")  # the DEQUANT constexpr is the index
_GEMV_DEQUANT_MODES = ("f32", "int", "pair")
_WIDE_DEQUANT_MODES = ("int", "half")


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
        if self.kind != "gemv" and self.block_m < 16:
            raise ValueError("the tensor-core kinds need block_m >= 16")
        if self.kind == "gemv" and self.block_m != 1:
            raise ValueError("the gemv kind takes one row per program (block_m 1)")
        if not self.dequant:
            object.__setattr__(self, "dequant", "f32" if self.kind == "gemv" else "half")
        modes = {"gemv": _GEMV_DEQUANT_MODES, "wide": _WIDE_DEQUANT_MODES, "wide_t": _WIDE_DEQUANT_MODES}
        if self.dequant not in modes.get(self.kind, _DEQUANT_MODES):
            raise ValueError(f"dequant {self.dequant!r} is not available for the {self.kind} kind")


@triton.jit
def _field(q, J: tl.constexpr, BITS: tl.constexpr):
    """Field j of every packed word: the codes of one R-row sub-tile (int32, unsigned)."""
    return (q >> (J * BITS)) & ((1 << BITS) - 1)


@triton.jit
def _codes_minus_zero(codes, z, MAGIC: tl.constexpr, IS_BF16: tl.constexpr):
    """(code - zero) in z's dtype, exact. With MAGIC the code is OR-ed into the bits of 128.0
    (bf16) or 1024.0 (fp16), which gives 128 + code / 1024 + code with no int-to-float
    conversion; subtracting base + zero is exact since both are integers the format
    represents. The host only asks for it where they are (4-bit codes in bf16, up to 8-bit
    in fp16). (Unlike the float32 form, the literal magic is better here: the compiler pairs
    two codes in one LOP3 and keeps the packed weights in the MMA operand layout.)"""
    if MAGIC:
        if IS_BF16:
            diff = (codes | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True) - (z + 128.0)
        else:
            diff = (codes | 0x6400).to(tl.int16).to(tl.float16, bitcast=True) - (z + 1024.0)
    else:
        diff = codes.to(z.dtype) - z
    return diff


@triton.jit
def _field_scaled_f32(q, magic_bits, J: tl.constexpr, BITS: tl.constexpr, LOW: tl.constexpr):
    """Field j as float32 times a power of two: (code * 2**sh, 2**-sh). The field is masked *in
    place* (no shift) and OR-ed into the bits of 2**23: one LOP3 gives 2**23 + code * 2**sh
    exactly while the field sits below bit 23, and one subtraction leaves code * 2**sh. The
    fields from LOW up are read after the caller shifted the word down once (q >> LOW*BITS).
    The caller folds 2**-sh into x (exact: a power of two). ``magic_bits`` (0x4B000000) is a
    kernel argument, not a literal, so that it sits in a register and the field mask is the
    LOP3's immediate (with the magic as the immediate the compiler re-creates each mask)."""
    if J < LOW:
        SH: tl.constexpr = J * BITS
    else:
        SH: tl.constexpr = (J - LOW) * BITS
    f = ((q & (((1 << BITS) - 1) << SH)) | magic_bits).to(tl.float32, bitcast=True) - _F32_MAGIC
    inv: tl.constexpr = 1.0 / (1 << SH)
    return f, inv


@triton.jit
def _dequant_f32(q, magic_bits, s, z, J: tl.constexpr, BITS: tl.constexpr, LOW: tl.constexpr):
    """(code - zero) * scale in float32 for the tensor-core kinds: the field masked in place
    into 2**23 (one LOP3, as in ``_field_scaled_f32``), one FADD of 2**23 + zero * 2**sh and
    one FMUL by scale * 2**-sh (both per column, not per weight). (code - zero) * scale is
    exact in float32 (9-bit integer times an 8- or 11-bit mantissa), so the caller's cast to
    bf16 / fp16 rounds once, as the reference does."""
    if J < LOW:
        SH: tl.constexpr = J * BITS
    else:
        SH: tl.constexpr = (J - LOW) * BITS
    f = ((q & (((1 << BITS) - 1) << SH)) | magic_bits).to(tl.float32, bitcast=True)
    zf = z.to(tl.float32) * (1 << SH) + _F32_MAGIC
    return (f - zf) * (s.to(tl.float32) * (1.0 / (1 << SH)))


@triton.jit
def _gemv_flush(acc, part, xsum, s_ptr, z_ptr, g, N, offs_r, offs_n, mask2):
    """acc += (sum (code * x) - zero * sum x) * scale for the group ``g`` just finished. The
    scale / zero rows are loaded as [R, BLOCK_N] (repeated rows; L1 hits) so that they share
    the packed words' layout: no layout change in the loop."""
    g_off = g.to(tl.int64) * N + offs_n[None, :] + offs_r[:, None] * 0
    sc = tl.load(s_ptr + g_off, mask=mask2, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + g_off, mask=mask2, other=0.0).to(tl.float32)
    return acc + (part - z * xsum[:, None]) * sc


@triton.jit
def _gemv_words(x_row, qw_ptr, N, kt, kt_end, offs_n, mask_n, R: tl.constexpr, PACK: tl.constexpr,
                MASK_K: tl.constexpr):
    """The packed words q [R, BLOCK_N] of K tile ``kt`` (0 past kt_end when MASK_K), where the
    tile's inputs start in x, its first input, the row indices, which rows are valid and the
    words' mask."""
    offs_r = tl.arange(0, R)
    kbase = kt * R * PACK
    valid_r = (offs_r * 0 + kt) < kt_end
    mask2 = mask_n[None, :]
    if MASK_K:
        mask2 = valid_r[:, None] & mask2
    q = tl.load(qw_ptr + (kt * R + offs_r)[:, None].to(tl.int64) * N + offs_n[None, :], mask=mask2, other=0)
    return q, x_row + kbase, kbase, offs_r, valid_r, mask2


@triton.jit
def _gemv_tile(acc, x_row, qw_ptr, s_ptr, z_ptr, g_ptr, N, kt, kt_end, offs_n, mask_n, magic_bits,
               GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr,
               HAS_ROW_GROUPS: tl.constexpr, MAGIC: tl.constexpr, MASK_K: tl.constexpr):
    """acc[R, BLOCK_N] += the products of K tile ``kt`` for one row of x (nothing if kt >=
    kt_end). The 2-D accumulator keeps the packed words' load layout (several columns per
    thread, so each x value a thread loads serves several weights). Per weight with MAGIC:
    one LOP3, one FADD, one FFMA (``_field_scaled_f32``); the zero point enters once per group and column as
    zero * sum(x), the scale once per group and column. MASK_K: the tile may lie past the
    split's end (unrolled loops); otherwise no K masks (fewer instructions per x load)."""
    PACK: tl.constexpr = 32 // BITS
    # Fields 0 .. LOW-1 lie below bit 23 in place; the rest (3 at 4 bits, 2 at 8) do after one shift.
    LOW: tl.constexpr = 23 // BITS
    q, x_tile, kbase, offs_r, valid_r, mask2 = _gemv_words(x_row, qw_ptr, N, kt, kt_end, offs_n, mask_n, R, PACK,
                                                           MASK_K)
    part = tl.zeros((R, BLOCK_N), dtype=tl.float32)
    xsum = tl.zeros((R,), dtype=tl.float32)
    for j in tl.static_range(PACK):
        if MASK_K:
            xj = tl.load(x_tile + j * R + offs_r, mask=valid_r, other=0.0).to(tl.float32)
        else:
            xj = tl.load(x_tile + j * R + offs_r).to(tl.float32)
        if HAS_ROW_GROUPS:
            k = kbase + j * R + offs_r
            g_off = tl.load(g_ptr + k, mask=valid_r, other=0)[:, None].to(tl.int64) * N + offs_n[None, :]
            sc = tl.load(s_ptr + g_off, mask=mask2, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + g_off, mask=mask2, other=0.0).to(tl.float32)
            acc += (_field(q, j, BITS).to(tl.float32) - z) * sc * xj[:, None]
        else:
            if MAGIC:
                if j == LOW:
                    q = q >> (LOW * BITS)  # the high fields, moved down (sign bits: masked per field)
                f, inv = _field_scaled_f32(q, magic_bits, j, BITS, LOW)
                part += f * (xj * inv)[:, None]
            else:
                part += _field(q, j, BITS).to(tl.float32) * xj[:, None]
            xsum += xj
            if j == PACK - 1:
                acc = _gemv_flush(acc, part, xsum, s_ptr, z_ptr, (kbase + j * R) // GROUP_SIZE, N, offs_r, offs_n,
                                  mask2)
            elif ((j + 1) * R) % GROUP_SIZE == 0:  # a group ends inside the tile (R divides the group size)
                acc = _gemv_flush(acc, part, xsum, s_ptr, z_ptr, (kbase + j * R) // GROUP_SIZE, N, offs_r, offs_n,
                                  mask2)
                part = tl.zeros((R, BLOCK_N), dtype=tl.float32)
                xsum = tl.zeros((R,), dtype=tl.float32)
    return acc


@triton.jit
def _gemv_tile_pairs(acc, x_row, qw_ptr, s_ptr, z_ptr, N, kt, kt_end, offs_n, mask_n,
                     GROUP_SIZE: tl.constexpr, R: tl.constexpr, MASK_K: tl.constexpr):
    """acc[R, BLOCK_N] += scale * the products of K tile ``kt`` (4-bit codes; the tile's 8 * R
    inputs lie in one group, which the host checks): per word one inline-asm block of packed
    bf16 math (``int4_pairs.pair_products``), then one FFMA with the column's scale."""
    q, x_tile, kbase, offs_r, valid_r, _ = _gemv_words(x_row, qw_ptr, N, kt, kt_end, offs_n, mask_n, R, 8, MASK_K)
    g_off = (kbase // GROUP_SIZE).to(tl.int64) * N + offs_n
    m1 = mask_n & (kt < kt_end)
    sc = tl.load(s_ptr + g_off, mask=m1, other=0.0)
    z = tl.load(z_ptr + g_off, mask=m1, other=0.0)
    zb = (z.to(tl.float32) + 128.0).to(tl.bfloat16)  # exact: integer zero points below 128
    zz = half_pair(zb, zb)[None, :]
    xp0 = half_pair(_x_rows(x_tile, 0, offs_r, valid_r, MASK_K), _x_rows(x_tile, 4 * R, offs_r, valid_r, MASK_K))
    xp1 = half_pair(_x_rows(x_tile, R, offs_r, valid_r, MASK_K), _x_rows(x_tile, 5 * R, offs_r, valid_r, MASK_K))
    xp2 = half_pair(_x_rows(x_tile, 2 * R, offs_r, valid_r, MASK_K), _x_rows(x_tile, 6 * R, offs_r, valid_r, MASK_K))
    xp3 = half_pair(_x_rows(x_tile, 3 * R, offs_r, valid_r, MASK_K), _x_rows(x_tile, 7 * R, offs_r, valid_r, MASK_K))
    return acc + pair_products(q, xp0[:, None], xp1[:, None], xp2[:, None], xp3[:, None],
                                zz) * sc.to(tl.float32)[None, :]


@triton.jit
def _x_rows(x_tile, off, offs_r, valid_r, MASK_K: tl.constexpr):
    """x[off + r] for the tile's R rows in bf16 (0 past the split's end when MASK_K)."""
    if MASK_K:
        x = tl.load(x_tile + off + offs_r, mask=valid_r, other=0.0)
    else:
        x = tl.load(x_tile + off + offs_r)
    return x.to(tl.bfloat16)


@triton.jit
def _finish(y, offs, mask, bias, part_ptr, count_ptr, out_ptr, tile_id, pid_k, MN, SPLIT_K: tl.constexpr,
            HAS_BIAS: tl.constexpr):
    """Store this program's float32 tile ``y`` (element offsets ``offs`` into [M, N]) as the
    output, plus ``bias``. With SPLIT_K > 1 it is one slice's partial sums: stored, then a
    ticket from the tile's counter (``tickets.py``); the program that draws the last one adds
    the slices in slice order (the same sum whichever program is last), writes the output and
    resets the counter. One launch, no reduction kernel."""
    last = True
    if SPLIT_K > 1:
        tl.store(part_ptr + pid_k * MN + offs, y, mask=mask)
        tl.debug_barrier()  # every thread's partials written before the ticket is taken
        ticket = tl.atomic_add(count_ptr + tile_id, 1, sem="acq_rel", scope="gpu")
        last = ticket == SPLIT_K - 1
        if last:
            y = tl.zeros_like(y)
            for s in range(SPLIT_K):
                y += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(count_ptr + tile_id, 0, sem="relaxed", scope="gpu")
    if last:
        if HAS_BIAS:
            y += bias
        tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _wna16_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr, b_ptr, part_ptr, count_ptr, out_ptr,
    M, N, stride_xm, k_tiles, tiles_per_split, magic_bits,
    GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, UNROLL: tl.constexpr, HAS_ROW_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr,
    MAGIC: tl.constexpr, STAGES: tl.constexpr, SPLIT_K: tl.constexpr, PAIR: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    """out[m, n] = x[m, :] @ W[:, n] (+ bias), this program's split of K (FMA, float32; the
    splits summed in-kernel, ``_finish``); one row per program (BLOCK_M = 1: a second row in the same program costs more registers
    and instructions per weight than the tensor-core kinds at 16 rows)."""
    pdl_prologue(PDL)
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    kt0 = pid_k * tiles_per_split
    kt1 = tl.minimum(kt0 + tiles_per_split, k_tiles)
    x_row = x_ptr + pid_m.to(tl.int64) * stride_xm  # the grid has exactly M row programs
    acc = tl.zeros((R, BLOCK_N), dtype=tl.float32)
    # The pipeliner only takes loops without tl.dot when asked per loop: STAGES (the launch's
    # num_stages) makes it prefetch the next tiles' words while this one is unpacked.
    for kt in tl.range(kt0, kt1, UNROLL, num_stages=STAGES):
        for u in tl.static_range(UNROLL):
            if PAIR:
                acc = _gemv_tile_pairs(acc, x_row, qw_ptr, s_ptr, z_ptr, N, kt + u, kt1, offs_n, mask_n, GROUP_SIZE,
                                       R, UNROLL > 1)
            else:
                acc = _gemv_tile(acc, x_row, qw_ptr, s_ptr, z_ptr, g_ptr, N, kt + u, kt1, offs_n, mask_n,
                                 magic_bits, GROUP_SIZE, BITS, R, BLOCK_N, HAS_ROW_GROUPS, MAGIC, UNROLL > 1)
    y = tl.sum(acc, axis=0)  # the one reduction over R
    bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32) if HAS_BIAS else 0.0
    _finish(y, pid_m.to(tl.int64) * N + offs_n, mask_n, bias, part_ptr, count_ptr, out_ptr,
            pid_m * tl.num_programs(0) + pid_n, pid_k, M * N, SPLIT_K, HAS_BIAS)


@triton.jit
def _dot_scales(s_ptr, z_ptr, g_ptr, N, k0, k, offs_n, mask_n, GROUP_SIZE: tl.constexpr, SWAP: tl.constexpr,
                HAS_ROW_GROUPS: tl.constexpr):
    """Scale and zero of a sub-tile, shaped to broadcast over it: [R, BLOCK_N] / [BLOCK_N, R]
    per row with row groups, else one row [1, BLOCK_N] / [BLOCK_N, 1] (the group of input k0)."""
    if HAS_ROW_GROUPS:
        g = tl.load(g_ptr + k)
        if SWAP:
            g_off = g[None, :].to(tl.int64) * N + offs_n[:, None]
            m2 = mask_n[:, None]
        else:
            g_off = g[:, None].to(tl.int64) * N + offs_n[None, :]
            m2 = mask_n[None, :]
        s = tl.load(s_ptr + g_off, mask=m2, other=0.0)
        z = tl.load(z_ptr + g_off, mask=m2, other=0.0)
    else:
        g_off = (k0 // GROUP_SIZE).to(tl.int64) * N + offs_n
        s = tl.load(s_ptr + g_off, mask=mask_n, other=0.0)
        z = tl.load(z_ptr + g_off, mask=mask_n, other=0.0)
        if SWAP:
            s, z = s[:, None], z[:, None]
        else:
            s, z = s[None, :], z[None, :]
    return s, z


@triton.jit
def _dot_field(acc, q, s, z, x_rows, k, mask_m, magic_bits, J: tl.constexpr, BITS: tl.constexpr, LOW: tl.constexpr,
               DEQUANT: tl.constexpr, IS_BF16: tl.constexpr, SWAP: tl.constexpr):
    """acc += x[:, k] @ W[k, :] for field J of the packed words q (the R inputs k), dequantized
    in the form DEQUANT picks (``_DEQUANT_MODES``); SWAP: acc^T += W^T @ x^T."""
    if DEQUANT == 2:
        w = _dequant_f32(q, magic_bits, s, z, J, BITS, LOW).to(x_rows.dtype.element_ty)
    else:
        w = (_codes_minus_zero(_field(q, J, BITS), z, DEQUANT == 1, IS_BF16) * s).to(x_rows.dtype.element_ty)
    return _dot_x(acc, w, x_rows, k, mask_m, SWAP)


@triton.jit
def _dot_x(acc, w, x_rows, k, mask_m, SWAP: tl.constexpr):
    """acc += x[:, k] @ w (SWAP: acc^T += w @ x[:, k]^T, w being the transposed weight)."""
    if SWAP:
        xt = tl.load(x_rows[None, :] + k[:, None], mask=mask_m[None, :], other=0.0)
        acc = tl.dot(w, xt, acc)
    else:
        xv = tl.load(x_rows[:, None] + k[None, :], mask=mask_m[:, None], other=0.0)
        acc = tl.dot(xv, w, acc)
    return acc


@triton.jit
def _dot_finish(acc, offs_m, offs_n, mask_m, mask_n, b_ptr, part_ptr, count_ptr, out_ptr, tile_id, pid_k, M, N,
                SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, SWAP: tl.constexpr):
    """``_finish`` for a tensor-core tile: acc [BLOCK_M, BLOCK_N] (SWAP: its transpose)."""
    if SWAP:
        offs = offs_m[None, :].to(tl.int64) * N + offs_n[:, None]
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None] if HAS_BIAS else 0.0
        mask = mask_m[None, :] & mask_n[:, None]
    else:
        offs = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :] if HAS_BIAS else 0.0
        mask = mask_m[:, None] & mask_n[None, :]
    _finish(acc, offs, mask, bias, part_ptr, count_ptr, out_ptr, tile_id, pid_k, M * N, SPLIT_K, HAS_BIAS)


@triton.jit
def _wna16_dot_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr, b_ptr, part_ptr, count_ptr, out_ptr,
    M, N, stride_xm, k_tiles, tiles_per_split, magic_bits,
    GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, SWAP: tl.constexpr, HAS_ROW_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr,
    DEQUANT: tl.constexpr, IS_BF16: tl.constexpr, SPLIT_K: tl.constexpr, PDL: tl.constexpr = False,
):
    """out[m, n] = x[m, :] @ W[:, n] (+ bias), this program's split of K (tensor cores; the
    splits summed in-kernel, ``_finish``)."""
    pdl_prologue(PDL)
    PACK: tl.constexpr = 32 // BITS
    LOW: tl.constexpr = 23 // BITS  # fields below bit 23 in place (see _gemv_tile)
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R)
    mask_m, mask_n = offs_m < M, offs_n < N
    kt0 = pid_k * tiles_per_split
    kt1 = tl.minimum(kt0 + tiles_per_split, k_tiles)
    x_rows = x_ptr + offs_m.to(tl.int64) * stride_xm  # [BLOCK_M] row starts
    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(kt0, kt1):
        rows = (kt * R + offs_r).to(tl.int64)
        if SWAP:
            q = tl.load(qw_ptr + rows[None, :] * N + offs_n[:, None], mask=mask_n[:, None], other=0)
        else:
            q = tl.load(qw_ptr + rows[:, None] * N + offs_n[None, :], mask=mask_n[None, :], other=0)
        for j in tl.static_range(PACK):
            k0 = kt * R * PACK + j * R
            k = k0 + offs_r
            # A new scale row only where a group starts (compile-time; R divides the group size).
            if HAS_ROW_GROUPS:
                s, z = _dot_scales(s_ptr, z_ptr, g_ptr, N, k0, k, offs_n, mask_n, GROUP_SIZE, SWAP, True)
            elif (j * R) % GROUP_SIZE == 0:
                s, z = _dot_scales(s_ptr, z_ptr, g_ptr, N, k0, k, offs_n, mask_n, GROUP_SIZE, SWAP, False)
            if DEQUANT == 2 and j == LOW:
                q = q >> (LOW * BITS)  # the high fields, moved down once
            acc = _dot_field(acc, q, s, z, x_rows, k, mask_m, magic_bits, j, BITS, LOW, DEQUANT, IS_BF16, SWAP)
    _dot_finish(acc, offs_m, offs_n, mask_m, mask_n, b_ptr, part_ptr, count_ptr, out_ptr,
                pid_m * tl.num_programs(0) + pid_n, pid_k, M, N, SPLIT_K, HAS_BIAS, SWAP)


@triton.jit
def _wide_tile(qw_ptr, s_ptr, z_ptr, g_ptr, N, kt, offs_n, mask_n, GROUP_SIZE: tl.constexpr, BITS: tl.constexpr,
               R: tl.constexpr, TILES: tl.constexpr, BLOCK_N: tl.constexpr, HAS_ROW_GROUPS: tl.constexpr,
               MAGIC: tl.constexpr, IS_BF16: tl.constexpr, SWAP: tl.constexpr):
    """The dequantized weight of TILES packed K tiles from tile ``kt``, as one MMA operand:
    [TILES * R * PACK, BLOCK_N] (SWAP: its transpose). The words are loaded once; every field
    j of them is shifted out in one broadcast ([.., PACK, R, ..]), and because field j of
    packed row r *is* input j * R + r of its tile (the interleaved layout), merging the
    (tile, field, row) axes is the K axis in order: a reshape, no gather."""
    PACK: tl.constexpr = 32 // BITS
    BK: tl.constexpr = R * PACK
    offs_t = tl.arange(0, TILES)
    offs_j = tl.arange(0, PACK)
    offs_r = tl.arange(0, R)
    shifts = offs_j * BITS
    k0 = kt * BK + offs_t[:, None] * BK + offs_j[None, :] * R  # [TILES, PACK]: first input of each sub-tile
    rows = (kt * R + offs_t[:, None] * R + offs_r[None, :]).to(tl.int64)  # [TILES, R] packed rows
    if HAS_ROW_GROUPS:
        g = tl.load(g_ptr + k0[:, :, None] + offs_r[None, None, :]).to(tl.int64)  # [TILES, PACK, R]
    elif GROUP_SIZE % BK == 0:  # one scale row per tile
        g = ((kt * BK + offs_t * BK) // GROUP_SIZE).to(tl.int64)[:, None, None]  # [TILES, 1, 1]
    else:
        g = (k0 // GROUP_SIZE).to(tl.int64)[:, :, None]  # [TILES, PACK, 1]: R divides the group size
    if SWAP:
        # loaded with the field axis already in place ([BN, TILES, 1, R]), so that the shift
        # broadcasts in the load's vectorised layout (expanding after the load re-lays the
        # tile out one element a thread, and the MMA operand is then stored 2 bytes at a time)
        q = tl.load(qw_ptr + rows[None, :, None, :] * N + offs_n[:, None, None, None],
                    mask=mask_n[:, None, None, None], other=0)
        codes = (q >> shifts[None, None, :, None]) & ((1 << BITS) - 1)  # [BN, TILES, PACK, R]
        g_off = g[None, :, :, :] * N + offs_n[:, None, None, None]
        s = tl.load(s_ptr + g_off, mask=mask_n[:, None, None, None], other=0.0)
        z = tl.load(z_ptr + g_off, mask=mask_n[:, None, None, None], other=0.0)
        w = tl.reshape(_codes_minus_zero(codes, z, MAGIC, IS_BF16) * s, (BLOCK_N, TILES * BK))
    else:
        q = tl.load(qw_ptr + rows[:, None, :, None] * N + offs_n[None, None, None, :],
                    mask=mask_n[None, None, None, :], other=0)  # [TILES, 1, R, BN] (see above)
        codes = (q >> shifts[None, :, None, None]) & ((1 << BITS) - 1)  # [TILES, PACK, R, BN]
        g_off = g[:, :, :, None] * N + offs_n[None, None, None, :]
        s = tl.load(s_ptr + g_off, mask=mask_n[None, None, None, :], other=0.0)
        z = tl.load(z_ptr + g_off, mask=mask_n[None, None, None, :], other=0.0)
        w = tl.reshape(_codes_minus_zero(codes, z, MAGIC, IS_BF16) * s, (TILES * BK, BLOCK_N))
    return w


@triton.jit
def _wna16_wide_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr, b_ptr, part_ptr, count_ptr, out_ptr,
    M, N, stride_xm, k_tiles, tiles_per_split, magic_bits,
    GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, TILES: tl.constexpr, SWAP: tl.constexpr, HAS_ROW_GROUPS: tl.constexpr,
    HAS_BIAS: tl.constexpr, MAGIC: tl.constexpr, IS_BF16: tl.constexpr, STAGES: tl.constexpr,
    SPLIT_K: tl.constexpr, PDL: tl.constexpr = False,
):
    """out[m, n] = x[m, :] @ W[:, n] (+ bias), this program's split of K: one tensor-core
    step of K = TILES * R * PACK inputs per loop iteration (``_wide_tile``), loads pipelined
    STAGES deep. Programs walk the M tiles of one column tile together (the M index varies
    fastest), so a column tile's words come from HBM once however many M tiles there are."""
    pdl_prologue(PDL)
    PACK: tl.constexpr = 32 // BITS
    BK: tl.constexpr = R * PACK
    m_tiles = tl.cdiv(M, BLOCK_M)
    pid, pid_k = tl.program_id(0), tl.program_id(2)
    pid_m, pid_n = pid % m_tiles, pid // m_tiles
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, TILES * BK)
    mask_m, mask_n = offs_m < M, offs_n < N
    kt0 = pid_k * tiles_per_split
    kt1 = tl.minimum(kt0 + tiles_per_split, k_tiles)
    x_rows = x_ptr + offs_m.to(tl.int64) * stride_xm
    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in tl.range(kt0, kt1, TILES, num_stages=STAGES):
        w = _wide_tile(qw_ptr, s_ptr, z_ptr, g_ptr, N, kt, offs_n, mask_n, GROUP_SIZE, BITS, R, TILES, BLOCK_N,
                       HAS_ROW_GROUPS, MAGIC, IS_BF16, SWAP)
        acc = _dot_x(acc, w, x_rows, kt * BK + offs_k, mask_m, SWAP)
    _dot_finish(acc, offs_m, offs_n, mask_m, mask_n, b_ptr, part_ptr, count_ptr, out_ptr, pid, pid_k, M, N,
                SPLIT_K, HAS_BIAS, SWAP)


@triton.jit
def _wna16_dequant_kernel(
    qw_ptr, s_ptr, z_ptr, g_ptr, out_ptr, N,
    GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_ROW_GROUPS: tl.constexpr, MAGIC: tl.constexpr, IS_BF16: tl.constexpr, PDL: tl.constexpr = False,
):
    """out[k, n] = (code - zero) * scale for the inputs of K tile ``program_id(0)``."""
    pdl_prologue(PDL)
    PACK: tl.constexpr = 32 // BITS
    kt = tl.program_id(0)
    offs_r = tl.arange(0, R)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_r[:, None] < R) & (n[None, :] < N)
    q = tl.load(qw_ptr + (kt * R + offs_r)[:, None].to(tl.int64) * N + n[None, :], mask=mask, other=0)
    for j in tl.static_range(PACK):
        k = kt * R * PACK + j * R + offs_r
        if HAS_ROW_GROUPS:
            g = tl.load(g_ptr + k)
        else:
            g = k // GROUP_SIZE
        g_off = g[:, None].to(tl.int64) * N + n[None, :]
        s = tl.load(s_ptr + g_off, mask=mask, other=0.0)
        z = tl.load(z_ptr + g_off, mask=mask, other=0.0)
        w = _codes_minus_zero(_field(q, j, BITS), z, MAGIC, IS_BF16) * s
        tl.store(out_ptr + k[:, None].to(tl.int64) * N + n[None, :], w.to(out_ptr.dtype.element_ty), mask=mask)


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
    if cfg.dequant == "pair":
        return bits == 4 and group_size % (r * 8) == 0 and not row_groups and not _interpreting()
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
    k_tiles = k // (r * (32 // bits))
    tiles_per_split = triton.cdiv(k_tiles, max(1, cfg.split_k))
    if cfg.kind in ("wide", "wide_t"):  # a split is whole steps of ``unroll`` tiles
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
    if cfg.kind == "gemv":
        _launch(_wna16_gemv_kernel, grid, args, common, cfg, (bits, x2d.dtype), UNROLL=cfg.unroll,
                MAGIC=cfg.dequant == "f32", PAIR=cfg.dequant == "pair")
    elif cfg.kind in ("wide", "wide_t"):
        _launch(_wna16_wide_kernel, grid, args, common, cfg, (bits, x2d.dtype), TILES=cfg.unroll,
                SWAP=cfg.kind == "wide_t", MAGIC=cfg.dequant == "half" and _magic_exact(x2d.dtype, bits),
                IS_BF16=x2d.dtype == torch.bfloat16)
    else:
        _launch(_wna16_dot_kernel, grid, args, common, cfg, (bits, x2d.dtype), SWAP=cfg.kind == "dot_t",
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
            stages = {"STAGES": num_stages} if kernel in (_wna16_gemv_kernel, _wna16_wide_kernel) else {}
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
    _wna16_dequant_kernel[grid](qweight, scales, zeros, row_groups if row_groups is not None else qweight, out, n,
                                GROUP_SIZE=group_size, BITS=bits, R=r, BLOCK_N=block_n,
                                HAS_ROW_GROUPS=row_groups is not None, MAGIC=_magic_exact(scales.dtype, bits),
                                IS_BF16=scales.dtype == torch.bfloat16, num_warps=4, **launch_kwargs())
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
    cfg = pick_config(x2d.shape[0], qweight.shape[1], x2d.shape[1], bits, group_size, _sms(x2d.device),
                      row_groups is not None)
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
