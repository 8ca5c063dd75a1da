"""The Triton kernels of the W4A16 / W8A16 GEMM (device code only; ``triton_wna16`` holds the
kinds, their configs and launches, and describes what each kernel does).

Shared pieces: ``_field`` / ``_codes_minus_zero`` / ``_field_scaled_f32`` / ``_dequant_f32`` turn
packed codes into numbers, ``_finish`` stores a tile (and sums split-K slices in-kernel). Then
one kernel per kind: ``wna16_gemv_kernel`` (FMA, one row per program; the paired bf16 form is
``int4_pairs``), ``wna16_dot_kernel`` (dot / dot_t: a K=16 tensor-core step per field),
``wna16_wide_kernel`` (wide / wide_t: a step per packed K tile), ``wna16_mma_kernel`` (mma:
per-lane fragments for ``mma.sync``, ``int4_mma``) and ``wna16_dequant_kernel`` (the dense
weight, for dequantize + cuBLAS).
"""

from __future__ import annotations

import triton
import triton.language as tl

from pagedlm.kernels.int4_mma import mma_steps
from pagedlm.kernels.int4_pairs import half_pair, pair_products
from pagedlm.kernels.pdl import pdl_prologue

_F32_MAGIC = tl.constexpr(8388608.0)  # 2**23: the float whose low mantissa bits take a code


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
def wna16_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, g_ptr, b_ptr, part_ptr, count_ptr, out_ptr,
    M, N, stride_xm, k_tiles, tiles_per_split, magic_bits,
    GROUP_SIZE: tl.constexpr, BITS: tl.constexpr, R: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, UNROLL: tl.constexpr, HAS_ROW_GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr,
    MAGIC: tl.constexpr, STAGES: tl.constexpr, SPLIT_K: tl.constexpr, PAIR: tl.constexpr = False,
    PDL: tl.constexpr = False,
):
    """out[m, n] = x[m, :] @ W[:, n] (+ bias), this program's split of K (FMA, float32; the
    splits summed in-kernel, ``_finish``); one row per program (BLOCK_M = 1: a second row in the
    same program costs more registers and instructions per weight than the tensor-core kinds at
    16 rows)."""
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
def wna16_dot_kernel(
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
def wna16_wide_kernel(
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
def _base_plus_zero(z, IS_FP16: tl.constexpr):
    """(base + zero) in both halves of a word: 1024 + z in fp16, 128 + z in bf16 (exact: integer
    zero points below 128), what ``int4_mma``'s packed subtraction takes."""
    zb = (z.to(tl.float32) + (1024.0 if IS_FP16 else 128.0)).to(z.dtype)
    return half_pair(zb, zb)


@triton.jit
def _halves(v):
    """An int64 of four 16-bit activations as its two int32 halves (two B-fragment words)."""
    return v.to(tl.int32), (v >> 32).to(tl.int32)


@triton.jit
def _mma_loads(qw_ptr, s_ptr, z_ptr, x_row, N, kt, t, c0, c1, GROUP_SIZE: tl.constexpr, IS_FP16: tl.constexpr):
    """What one K tile (128 inputs, inside one group) of the mma kind reads: the lane's words
    (packed rows 4t .. 4t+3 of columns g and g + 8), the two columns' (base + zero) pairs and
    float32 scales, and its activations x[16s + 4t .. 16s + 4t + 3] (one int64 per step s)."""
    row = (kt * 16 + 4 * t).to(tl.int64) * N
    grp = ((kt * 128) // GROUP_SIZE).to(tl.int64) * N
    xk = x_row + kt * 32
    return (tl.load(qw_ptr + row + c0), tl.load(qw_ptr + row + N + c0), tl.load(qw_ptr + row + 2 * N + c0),
            tl.load(qw_ptr + row + 3 * N + c0), tl.load(qw_ptr + row + c1), tl.load(qw_ptr + row + N + c1),
            tl.load(qw_ptr + row + 2 * N + c1), tl.load(qw_ptr + row + 3 * N + c1),
            _base_plus_zero(tl.load(z_ptr + grp + c0), IS_FP16), _base_plus_zero(tl.load(z_ptr + grp + c1), IS_FP16),
            tl.load(s_ptr + grp + c0).to(tl.float32), tl.load(s_ptr + grp + c1).to(tl.float32),
            tl.load(xk), tl.load(xk + 4), tl.load(xk + 8), tl.load(xk + 12),
            tl.load(xk + 16), tl.load(xk + 20), tl.load(xk + 24), tl.load(xk + 28))


@triton.jit
def _mma_tile(acc, ld, IS_FP16: tl.constexpr):
    """acc (the four float32 D fragments) plus one K tile's products from its loads ``ld``
    (``_mma_loads``): eight MMA steps in two inline-PTX blocks, the scales once."""
    zero = tl.zeros_like(acc[0])
    b0, b1 = _halves(ld[12])
    b2, b3 = _halves(ld[13])
    b4, b5 = _halves(ld[14])
    b6, b7 = _halves(ld[15])
    d = mma_steps(ld[0], ld[1], ld[2], ld[3], ld[4], ld[5], ld[6], ld[7], ld[8], ld[9], b0, b1, b2, b3, b4, b5,
                  b6, b7, zero, zero, zero, zero, False, IS_FP16)
    b0, b1 = _halves(ld[16])
    b2, b3 = _halves(ld[17])
    b4, b5 = _halves(ld[18])
    b6, b7 = _halves(ld[19])
    d = mma_steps(ld[0], ld[1], ld[2], ld[3], ld[4], ld[5], ld[6], ld[7], ld[8], ld[9], b0, b1, b2, b3, b4, b5,
                  b6, b7, d[0], d[1], d[2], d[3], True, IS_FP16)
    # D: (column g, x rows 2t / 2t+1), (column g + 8, the same rows)
    return acc[0] + d[0] * ld[10], acc[1] + d[1] * ld[10], acc[2] + d[2] * ld[11], acc[3] + d[3] * ld[11]


@triton.jit(do_not_specialize=["one"])
def wna16_mma_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, b_ptr, part_ptr, count_ptr, out_ptr,
    M, N, stride_xm, k_tiles, tiles_per_split, one,
    GROUP_SIZE: tl.constexpr, WARPS: tl.constexpr, UNROLL: tl.constexpr, HAS_BIAS: tl.constexpr,
    IS_FP16: tl.constexpr, STAGES: tl.constexpr, SPLIT_K: tl.constexpr, PDL: tl.constexpr = False,
):
    """out[m, n] = x[m, :] @ W[:, n] (+ bias) for M <= 8 rows, this program's split of K, on the
    tensor cores (``int4_mma``): each warp one 16-column tile, each K tile (128 inputs, inside
    one group) eight MMA steps whose A fragments every lane dequantizes from its own words;
    UNROLL tiles' loads are issued before their math (splits are whole multiples of UNROLL).
    The tensors hold one element per thread (32 * WARPS of them), element i in lane i % 32 of
    warp i // 32, which is what the warp-wide MMA in the inline PTX relies on; ``one`` (1,
    never specialised) keeps the compiler from proving the activation loads contiguous across
    lanes and vectorising them into another layout."""
    pdl_prologue(PDL)
    pid_n, pid_k = tl.program_id(0), tl.program_id(2)
    i = tl.arange(0, 32 * WARPS)
    lane = i % 32
    g = lane // 4
    t = lane % 4
    col0 = pid_n * (16 * WARPS) + (i // 32) * 16 + g  # A rows g and g + 8: two weight columns a lane
    col1 = col0 + 8
    c0 = tl.minimum(col0, N - 1).to(tl.int64)
    c1 = tl.minimum(col1, N - 1).to(tl.int64)
    # B column g is x row g (rows past M re-read the last one: their outputs are dropped)
    x_row = (x_ptr.to(tl.pointer_type(tl.int64)) + tl.minimum(g, M - 1).to(tl.int64) * (stride_xm // 4)
             + t * one)
    kt0 = pid_k * tiles_per_split
    kt1 = tl.minimum(kt0 + tiles_per_split, k_tiles)
    zero = tl.zeros([32 * WARPS], dtype=tl.float32)
    acc = (zero, zero, zero, zero)
    for kt in tl.range(kt0, kt1, UNROLL, num_stages=STAGES):
        ld = _mma_loads(qw_ptr, s_ptr, z_ptr, x_row, N, kt, t, c0, c1, GROUP_SIZE, IS_FP16)
        if UNROLL == 2:
            ld2 = _mma_loads(qw_ptr, s_ptr, z_ptr, x_row, N, kt + 1, t, c0, c1, GROUP_SIZE, IS_FP16)
        acc = _mma_tile(acc, ld, IS_FP16)
        if UNROLL == 2:
            acc = _mma_tile(acc, ld2, IS_FP16)
    rows = tl.join(2 * t, 2 * t + 1)  # [32 * WARPS, 2]
    cols = tl.join(col0, col1)
    y = tl.join(tl.join(acc[0], acc[1]), tl.join(acc[2], acc[3]))  # [element, row, column]
    offs = rows[:, :, None].to(tl.int64) * N + cols[:, None, :]
    mask = (rows[:, :, None] < M) & (cols[:, None, :] < N)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[:, None, :]
    _finish(y, offs, mask, bias, part_ptr, count_ptr, out_ptr, pid_n, pid_k, M * N, SPLIT_K, HAS_BIAS)


@triton.jit
def wna16_dequant_kernel(
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
