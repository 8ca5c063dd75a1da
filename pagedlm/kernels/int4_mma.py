"""Tensor-core steps for 4-bit codes at decode batch sizes: the inner step of the W4A16 "mma"
kind (``triton_wna16``), for M = 1-8 rows. Inline PTX (``mma.sync`` m16n8k16, packed 16-bit
subtraction: sm_90 for bf16), so not for Triton's CPU interpreter.

The step computes Dᵀ = Wᵀ·xᵀ on one 16-column tile of the weight: the dequantized weight is the
MMA's A operand (16 columns x 16 inputs), the activations its B operand (16 inputs x 8 rows of
x; rows past M are don't-cares whose outputs are dropped). Every lane of the warp dequantizes
its own A fragment straight from the packed words it loaded, so no tile goes through shared
memory and no layout changes: the kernel's tensors hold one element per thread and the lane of
each element is the thread's (the kernel makes sure no load is vectorised across lanes).

Lane (g, t) = (lane // 4, lane % 4) owns weight columns g and g + 8 of the tile. The MMA's A
fragment wants, for K-step s, inputs (2t, 2t+1) and (2t+8, 2t+9) of the step; which inputs of
the layer fill those slots is free as long as the B fragment agrees, so the lane takes packed
rows 4t .. 4t+3 of its columns (field s of those words: inputs 16s + 4t .. 16s + 4t + 3 of the
K tile, ``wna16_reference``'s interleaved layout) and its B fragment is the four activations
x[16s + 4t .. 16s + 4t + 3]: one 8-byte load per step. Per pair of words one PRMT puts rows
4t and 4t+1 (or 4t+2 and 4t+3) side by side, and for each step a shift and one LOP3 give the
two codes as 128 + code in packed bf16 (1024 + code in fp16), one packed subtraction of
(base + zero) leaves the exact code - zero; the scale enters once per group on the float32
result.
"""

from __future__ import annotations

import triton
import triton.language as tl


def _asm(high: bool, fp16: bool) -> str:
    """Four K-steps (0-3, or 4-7 with ``high``) of one 16-column tile. Operands: $0-$3 the
    float32 fragment D (columns g / g + 8 x rows 2t, 2t+1), $4-$7 column g's words of packed
    rows 4t .. 4t+3, $8-$11 column g + 8's, $12 / $13 (base + zero) of columns g / g + 8 in
    both halves, $14-$21 the B fragments (two per step), $22-$25 the accumulator coming in."""
    sel = "0x7632" if high else "0x5410"
    magic = "0x64006400" if fp16 else "0x43004300"
    ty = "f16" if fp16 else "bf16"
    lines = [".reg .b32 p0, q0, p1, q1, t, a0, a1, a2, a3;",
             f"prmt.b32 p0, $4, $5, {sel};", f"prmt.b32 q0, $6, $7, {sel};",
             f"prmt.b32 p1, $8, $9, {sel};", f"prmt.b32 q1, $10, $11, {sel};"]
    for s in range(4):
        for dst, src, zero in (("a0", "p0", "$12"), ("a2", "q0", "$12"), ("a1", "p1", "$13"), ("a3", "q1", "$13")):
            if s == 0:
                lines.append(f"lop3.b32 {dst}, {src}, 0x000F000F, {magic}, 0xEA;")
            else:
                lines += [f"shr.u32 t, {src}, {4 * s};", f"lop3.b32 {dst}, t, 0x000F000F, {magic}, 0xEA;"]
            lines.append(f"sub.rn.{ty}x2 {dst}, {dst}, {zero};")
        acc = "$22, $23, $24, $25" if s == 0 else "$0, $1, $2, $3"
        lines.append(f"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32 {{$0, $1, $2, $3}}, {{a0, a1, a2, a3}}, "
                     f"{{${14 + 2 * s}, ${15 + 2 * s}}}, {{{acc}}};")
    return "{\n" + "\n".join(lines) + "\n}"


_ASM = {(high, fp16): tl.constexpr(_asm(high, fp16)) for high in (False, True) for fp16 in (False, True)}
_ASM_LO_BF16, _ASM_HI_BF16 = _ASM[False, False], _ASM[True, False]
_ASM_LO_FP16, _ASM_HI_FP16 = _ASM[False, True], _ASM[True, True]
_CONSTRAINTS = tl.constexpr("=r,=r,=r,=r," + ",".join(["r"] * 22))


@triton.jit
def mma_steps(w0, w1, w2, w3, w4, w5, w6, w7, zz0, zz1, b0, b1, b2, b3, b4, b5, b6, b7, c0, c1, c2, c3,
              HIGH: tl.constexpr, FP16: tl.constexpr):
    """Four K-steps of a 16-column tile into the float32 fragment (c0..c3 in, D out); see _asm."""
    ASM: tl.constexpr = ((_ASM_HI_FP16 if HIGH else _ASM_LO_FP16) if FP16
                         else (_ASM_HI_BF16 if HIGH else _ASM_LO_BF16))
    return tl.inline_asm_elementwise(ASM, _CONSTRAINTS, [w0, w1, w2, w3, w4, w5, w6, w7, zz0, zz1, b0, b1, b2, b3,
                                                         b4, b5, b6, b7, c0, c1, c2, c3],
                                     dtype=(tl.float32,) * 4, is_pure=True, pack=1)
