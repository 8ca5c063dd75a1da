"""bitsandbytes 4-bit (NF4 / FP4) GEMM on 16-bit activations: y[M, N] = x[M, K] @ W^T (+ bias),
W[n, k] = table[code[n, k]] * absmax[n, k // blocksize], the codes packed two to a byte
[N, K / 2] (high nibble first: the even input), as ``bitsandbytes.py`` keeps a layer.

Each program owns a BLOCK_M x BLOCK_N output tile and walks K one block of ``blocksize``
inputs at a time, so a step's weights share one absmax per output column. The step's bytes
are read once; their high and low nibbles look up the 16-value table (as the activations'
16-bit type) into two [BLOCK_N, blocksize / 2] tiles, which the tensor cores multiply with
the even and the odd inputs of x (two dots: no interleaving of the nibbles); the step's float32
sum is scaled per column by its absmax before it joins the accumulator. Against the layer's
dequantize-then-GEMM this reads half a byte per weight instead of writing and reading a
16-bit copy (and the float32 lookups that build it) on every call.

Two more kernels serve where that tile loses (an H200, Llama-3.1-8B layers: the tiled GEMM's
table lookups stall its K loop, 530 us for gate_up at one row):

- ``nf4_gemv``, one row: each thread streams 16 bytes (32 weights, inside one absmax block) of
  a column per K tile, looks each nibble up in the float32 table (16 words: one L1 line, no
  bank conflicts), multiplies by the even / odd inputs and sums its 32 products in registers;
  each run of 32 is scaled by its block's absmax. No tensor cores, no staging: a pass over
  the codes;
- ``nf4_dequantize``: the weight in the activations' dtype (table value x absmax in float32,
  then rounded: the PyTorch dequantization's numbers), read once and written once, for the
  dequantize + GEMM that larger batches run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue


@dataclass(frozen=True)
class Nf4GemmConfig:
    block_m: int = 16
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3


# The tile shapes the load-time tuner times per M bucket (``bnb_linear``).
QUICK_CONFIGS = (Nf4GemmConfig(16, 32, 4, 3), Nf4GemmConfig(16, 64, 4, 3), Nf4GemmConfig(16, 128, 4, 4),
                 Nf4GemmConfig(32, 128, 4, 3), Nf4GemmConfig(64, 128, 4, 3), Nf4GemmConfig(128, 128, 8, 3))


@triton.jit
def _nf4_gemm_kernel(x_ptr, w_ptr, absmax_ptr, table_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_wn,
                     stride_an, stride_t, stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCKSIZE: tl.constexpr, GROUP_M: tl.constexpr, HAS_BIAS: tl.constexpr, PDL: tl.constexpr = False):
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    rows_in_group = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % rows_in_group
    pid_n = (pid % (GROUP_M * tiles_n)) // rows_in_group
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm_load = tl.minimum(rm, M - 1).to(tl.int64)
    rn_load = tl.minimum(rn, N - 1).to(tl.int64)
    HALF: tl.constexpr = BLOCKSIZE // 2
    rp = tl.arange(0, HALF)  # byte (input pair) index within a block
    x_rows = x_ptr + rm_load[:, None] * stride_xm
    w_rows = w_ptr + rn_load[:, None] * stride_wn
    a_cols = absmax_ptr + rn_load * stride_an
    pdl_prologue(PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, K // BLOCKSIZE):
        byte = tl.load(w_rows + kb * HALF + rp[None, :]).to(tl.int32)  # [BLOCK_N, HALF]
        x_even = tl.load(x_rows + kb * BLOCKSIZE + 2 * rp[None, :])  # [BLOCK_M, HALF]
        x_odd = tl.load(x_rows + kb * BLOCKSIZE + 2 * rp[None, :] + 1)
        hi = tl.load(table_ptr + (byte >> 4) * stride_t).to(x_even.dtype)
        lo = tl.load(table_ptr + (byte & 15) * stride_t).to(x_even.dtype)
        part = tl.dot(x_even, tl.trans(hi)) + tl.dot(x_odd, tl.trans(lo))
        acc += part * tl.load(a_cols + kb)[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn_load)[None, :].to(tl.float32)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def nf4_gemm(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor,
             bias: torch.Tensor | None = None, config: Nf4GemmConfig = Nf4GemmConfig()) -> torch.Tensor:
    """x [M, K] bf16 / fp16, packed uint8 [N, K / 2], absmax float32 [N, K / blocksize], table
    float32 [16] (the quant type's code values; any stride) -> [M, N] in x's dtype (float32 sums)."""
    blocksize = _check_layer(x, packed, absmax, table, "nf4_gemm")
    m, k = x.shape
    n = packed.shape[0]
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    grid = (triton.cdiv(m, config.block_m) * triton.cdiv(n, config.block_n),)
    _nf4_gemm_kernel[grid](
        x, packed, absmax, table, bias if bias is not None else out, out, m, n, k, x.stride(0), packed.stride(0),
        absmax.stride(0), table.stride(0), out.stride(0), BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        BLOCKSIZE=blocksize, GROUP_M=8, HAS_BIAS=bias is not None, num_warps=config.num_warps,
        num_stages=config.num_stages, **launch_kwargs())
    return out


@dataclass(frozen=True)
class Nf4GemvConfig:
    block_n: int = 2  # output columns per program
    block_k: int = 1024  # weights per K tile (a multiple of 32; K must be a multiple of it)
    num_warps: int = 4
    num_stages: int = 2


# One row: the tiles the load-time tuner times (``bnb_linear``): the best of a 93-tile sweep per
# 8B layer (``benchmarks/gpu_nf4.py``, H200) and the tuner's earlier picks.
GEMV_CONFIGS = (Nf4GemvConfig(8, 1024, 4, 3), Nf4GemvConfig(8, 1024, 8, 3), Nf4GemvConfig(4, 512, 2, 3),
                Nf4GemvConfig(8, 1024, 4, 2), Nf4GemvConfig(4, 2048, 4, 2), Nf4GemvConfig(2, 1024, 2, 2))
_CHUNK = 16  # bytes a thread loads at once: 32 weights, never across an absmax block (blocks >= 32)


@triton.jit
def _nf4_chunk_sums(x_ptr, w_tiles, a_rows, table_ptr, k0, stride_t, xoff, cfirst, byte, BLOCKSIZE: tl.constexpr):
    """One K tile's products, [BLOCK_N, chunks]: each chunk's 32 looked-up weights times its
    inputs, summed in the thread, times the chunk's absmax. ``byte``: the tile's codes."""
    xe, xo = tl.split(tl.load(x_ptr + k0 + xoff).to(tl.float32))  # [chunks, 16]: even / odd inputs
    b = byte.to(tl.int32)
    hi = tl.load(table_ptr + (b >> 4) * stride_t)
    lo = tl.load(table_ptr + (b & 15) * stride_t)
    sums = tl.sum(xe[None, :, :] * hi + xo[None, :, :] * lo, axis=2)
    return sums * tl.load(a_rows + (k0 + cfirst)[None, :] // BLOCKSIZE)


@triton.jit
def _nf4_gemv_kernel(x_ptr, w_ptr, absmax_ptr, table_ptr, bias_ptr, out_ptr, N, K, stride_wn, stride_an, stride_t,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCKSIZE: tl.constexpr, CHUNK: tl.constexpr,
                     HAS_BIAS: tl.constexpr, PDL: tl.constexpr = False):
    CHUNKS: tl.constexpr = BLOCK_K // 2 // CHUNK
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rn_load = tl.minimum(rn, N - 1).to(tl.int64)
    boff = tl.arange(0, CHUNKS)[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]  # bytes of a K tile
    xoff = boff[:, :, None] * 2 + tl.arange(0, 2)[None, None, :]  # each byte's even and odd input
    cfirst = tl.arange(0, CHUNKS) * (2 * CHUNK)  # each chunk's first input within the tile
    w_tiles = w_ptr + rn_load[:, None, None] * stride_wn + boff[None, :, :]
    a_rows = absmax_ptr + rn_load[:, None] * stride_an
    byte = tl.load(w_tiles)  # before the PDL wait: the codes are never written in a step
    pdl_prologue(PDL)
    acc = _nf4_chunk_sums(x_ptr, w_tiles, a_rows, table_ptr, 0, stride_t, xoff, cfirst, byte, BLOCKSIZE)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        byte = tl.load(w_tiles + k0 // 2)
        acc += _nf4_chunk_sums(x_ptr, w_tiles, a_rows, table_ptr, k0, stride_t, xoff, cfirst, byte, BLOCKSIZE)
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias_ptr + rn_load).to(tl.float32)
    tl.store(out_ptr + rn, out.to(out_ptr.dtype.element_ty), mask=rn < N)


def gemv_fits(m: int, k: int, config: Nf4GemvConfig) -> bool:
    return m == 1 and config.block_k % (2 * _CHUNK) == 0 and k % config.block_k == 0


def _check_layer(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor,
                 what: str) -> int:
    """The blocksize of a layer the kernels take (16-bit x [M, K], codes [N, K / 2], absmax
    [N, K / blocksize] float32, blocks a power of two of at least 32, a float32 table of 16),
    else a ValueError."""
    m, k = x.shape
    n = packed.shape[0]
    blocks = absmax.shape[1] if absmax.dim() == 2 else 0
    blocksize = k // blocks if blocks else 0
    if x.element_size() != 2 or packed.dtype != torch.uint8 or tuple(packed.shape) != (n, k // 2):
        raise ValueError(f"{what} takes 16-bit x [M, K] and uint8 codes [N, K / 2]; got {x.dtype} "
                         f"{tuple(x.shape)}, {packed.dtype} {tuple(packed.shape)}")
    if (tuple(absmax.shape) != (n, blocks) or blocksize * blocks != k or blocksize < 32
            or blocksize & (blocksize - 1) or table.shape != (16,) or table.dtype != torch.float32):
        raise ValueError(f"{what}: absmax {tuple(absmax.shape)} for a {n} x {k} weight (blocks of a power of two "
                         f"of at least 32 inputs along each row) and a float32 table of 16 values ({table.dtype} "
                         f"{tuple(table.shape)} given)")
    if x.stride(1) != 1 or packed.stride(1) != 1 or absmax.stride(1) != 1:
        raise ValueError(f"{what} needs unit stride along K")
    return blocksize


def nf4_gemv(x: torch.Tensor, packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor,
             bias: torch.Tensor | None = None, config: Nf4GemvConfig = Nf4GemvConfig()) -> torch.Tensor:
    """``nf4_gemm`` for one row (x [1, K], K a multiple of config.block_k)."""
    blocksize = _check_layer(x, packed, absmax, table, "nf4_gemv")
    k = x.shape[1]
    n = packed.shape[0]
    if not gemv_fits(x.shape[0], k, config):
        raise ValueError(f"nf4_gemv takes one row with K a multiple of block_k ({config.block_k}, itself a multiple "
                         f"of {2 * _CHUNK}); got x {tuple(x.shape)}")
    out = torch.empty(1, n, dtype=x.dtype, device=x.device)
    _nf4_gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x, packed, absmax, table, bias if bias is not None else out, out, n, k, packed.stride(0), absmax.stride(0),
        table.stride(0), BLOCK_N=config.block_n, BLOCK_K=config.block_k, BLOCKSIZE=blocksize, CHUNK=_CHUNK,
        HAS_BIAS=bias is not None, num_warps=config.num_warps, num_stages=config.num_stages, **launch_kwargs())
    return out


@triton.jit
def _nf4_dequant_kernel(w_ptr, absmax_ptr, table_ptr, out_ptr, HALF_K, stride_wn, stride_an, stride_t, stride_on,
                        BLOCKSIZE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # bytes of the row
    valid = p < HALF_K
    b = tl.load(w_ptr + row * stride_wn + p, mask=valid, other=0).to(tl.int32)
    a = tl.load(absmax_ptr + row * stride_an + (2 * p) // BLOCKSIZE, mask=valid, other=0.0)
    hi = tl.load(table_ptr + (b >> 4) * stride_t) * a
    lo = tl.load(table_ptr + (b & 15) * stride_t) * a
    k = tl.program_id(1) * 2 * BLOCK + tl.arange(0, 2 * BLOCK)
    values = tl.reshape(tl.join(hi, lo), [2 * BLOCK])  # high nibble first: the even input
    tl.store(out_ptr + row * stride_on + k, values.to(out_ptr.dtype.element_ty), mask=k < 2 * HALF_K)


def nf4_dequantize(packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """W [N, K] in ``dtype`` = table[code] * absmax (float32, then rounded), as
    ``bitsandbytes.dequantize_4bit`` computes it: codes uint8 [N, K / 2], absmax float32
    [N, K / blocksize], table float32 [16] (any stride)."""
    n, half_k = packed.shape
    probe = torch.empty(0, 2 * half_k, dtype=torch.bfloat16, device=packed.device)  # only shapes are checked
    blocksize = _check_layer(probe, packed, absmax, table, "nf4_dequantize")
    out = torch.empty(n, 2 * half_k, dtype=dtype, device=packed.device)
    block = 1024
    if n:
        _nf4_dequant_kernel[(n, triton.cdiv(half_k, block))](
            packed, absmax, table, out, half_k, packed.stride(0), absmax.stride(0), table.stride(0), out.stride(0),
            BLOCKSIZE=blocksize, BLOCK=block, num_warps=4)
    return out
