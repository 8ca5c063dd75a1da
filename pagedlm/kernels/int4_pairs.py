"""Packed-bf16 arithmetic for 4-bit codes: the inner step of the paired W4A16 GEMV
(``triton_wna16``, dequant form "pair"). Inline PTX (packed bf16 sub / mul: sm_90), so not
for Triton's CPU interpreter."""

from __future__ import annotations

import triton
import triton.language as tl

# One packed word (8 codes of one column, fields j = 0..7) times its 8 activations in packed
# bf16: (q >> 4i) & 0x000F000F | 0x43004300 puts fields i and i+4 in the two halves as
# 128 + code (one LOP3 for two codes), one packed subtraction of (128 + zero) leaves the exact
# code - zero, and packed multiply-adds with the activation pairs (x_i, x_{i+4}) sum four
# products per half (bf16 rounding, as a bf16 GEMM's operands have; bf16 has float32's range,
# so nothing overflows); the two halves then add in float32. $1 q, $2..$5 the activation
# pairs for i = 0..3, $6 (128 + zero) in both halves. fp16 activations are rounded to bf16
# first (fp16 pairs would overflow: four products of codes and activations of a few thousand);
# the 4-bit weights' own error is far larger than that rounding.
_PAIR_ASM = tl.constexpr("""{
    .reg .b32 w, t, a, lo, hi;
    lop3.b32 w, $1, 0x000F000F, 0x43004300, 0xEA;
    sub.rn.bf16x2 w, w, $6;
    mul.rn.bf16x2 a, w, $2;
    shr.u32 t, $1, 4;
    lop3.b32 w, t, 0x000F000F, 0x43004300, 0xEA;
    sub.rn.bf16x2 w, w, $6;
    fma.rn.bf16x2 a, w, $3, a;
    shr.u32 t, $1, 8;
    lop3.b32 w, t, 0x000F000F, 0x43004300, 0xEA;
    sub.rn.bf16x2 w, w, $6;
    fma.rn.bf16x2 a, w, $4, a;
    shr.u32 t, $1, 12;
    lop3.b32 w, t, 0x000F000F, 0x43004300, 0xEA;
    sub.rn.bf16x2 w, w, $6;
    fma.rn.bf16x2 a, w, $5, a;
    shl.b32 lo, a, 16;
    and.b32 hi, a, 0xFFFF0000;
    add.f32 $0, lo, hi;
}""")


@triton.jit
def pair_products(q, xp0, xp1, xp2, xp3, zz):
    """sum_j (code_j - zero) * x_j over the 8 fields of each word, float32 (see _PAIR_ASM)."""
    return tl.inline_asm_elementwise(_PAIR_ASM, "=r,r,r,r,r,r,r", [q, xp0, xp1, xp2, xp3, zz], dtype=tl.float32,
                                     is_pure=True, pack=1)


@triton.jit
def half_pair(lo, hi):
    """Two 16-bit floats in one int32 (lo in bits 0-15)."""
    lo_bits = lo.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return lo_bits | (hi.to(tl.int16, bitcast=True).to(tl.int32) << 16)
