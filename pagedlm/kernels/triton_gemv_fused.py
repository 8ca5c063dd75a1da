"""One-launch decode GEMV: y[M, N] = (x[M, K] @ w[N, K]^T) * scale_x[M] * scale_w[N] (+ bias),
for M = 1-8 rows and 16-bit or 8-bit weights.

At decode batch sizes a linear layer is one pass over its weight, so the kernel must keep
enough bytes in flight on every SM for the whole pass, and must not add launches: inside a
CUDA graph each extra kernel (a split-K reduction, a cast, a bias add) costs 1.5-3 us, as much
as streaming 6-12 MB. Hence:

- programs own BLOCK_N output columns and one of SPLIT_K slices of K (enough programs for
  every SM even at N = 4096);
- with SPLIT_K > 1 each slice stores its float32 partial sums, then takes a ticket from a
  per-column-block counter; the program that draws the last ticket sums the partials in slice
  order (deterministic), applies scales and bias, stores the output and resets the counter to
  zero for the next launch. One launch, no atomics on the data, no memset;
- the products are plain multiply-adds on register tiles (``DOT=False``: a GEMV row does not
  need the tensor cores, whose shared-memory staging costs bandwidth) or ``tl.dot`` on rows
  padded to 16 (``DOT=True``), whichever the tuner finds faster for the shape;
- for one row, ``chunk`` sums each run of ``chunk`` neighbouring products (one thread's 16-byte
  load) inside the thread every K tile, so the float32 accumulator is BLOCK_K / chunk wide
  instead of BLOCK_K: the tile, and with it the bytes each program keeps in flight, grows
  without the registers. 8-bit weights gain most (one float32 accumulator per byte otherwise):
  fp8 gate_up at M = 1 streams at 95% of copy bandwidth this way against 77% for the best
  other tile (H200, BENCHMARKS.md, 2026-11-30).

8-bit codes (fp8 e4m3, int8) and 16-bit values widen to float32 exactly; the accumulation is
float32 like the references' (F.linear, ``quant_reference.scaled_mm`` / ``weight_only_mm``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagedlm.kernels.tickets import MAX_TICKETS, ticket_counters
from pagedlm.kernels.pdl import launch_kwargs, pdl_prologue

MAX_M = 8


@dataclass(frozen=True)
class FusedGemvConfig:
    block_n: int = 16
    block_k: int = 512
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2
    dot: bool = False
    native: bool = False  # with dot: 8-bit codes on the tensor cores without widening
    chunk: int = 0  # without dot, one row: products summed in runs of `chunk` inside each thread


@triton.jit
def _tile_indices(pid_n, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's output columns and rows, and the clamped indices it loads with (rows /
    columns past M / N re-read the last valid one, so the K loop needs no masks)."""
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    return rn, rm, tl.minimum(rn, N - 1).to(tl.int64), tl.minimum(rm, M - 1)


@triton.jit
def _tile_product(acc, x, w, DOT: tl.constexpr, COMPUTE_BF16: tl.constexpr, NATIVE: tl.constexpr):
    """acc plus one K tile's products: x [BLOCK_M, BLOCK_K] times w [BLOCK_N, BLOCK_K]^T (DOT: on
    the tensor cores into [BLOCK_M, BLOCK_N]; else multiply-adds into [BLOCK_M, BLOCK_N, BLOCK_K],
    summed over K once at the end)."""
    if DOT:
        if NATIVE:
            acc += tl.dot(x, tl.trans(w), out_dtype=acc.dtype)
        else:
            compute = tl.bfloat16 if COMPUTE_BF16 else tl.float16
            acc += tl.dot(x.to(compute), tl.trans(w.to(compute)), out_dtype=tl.float32)
    else:
        acc += x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    return acc


@triton.jit
def _widen(w):
    """Codes or 16-bit values to float32, exactly. int8 goes through the float32 bit pattern
    2^23 + 128 + code (an integer op and a subtraction at full rate) rather than the integer
    conversion instruction, which runs at a quarter of the rate: at one byte per weight a
    GEMV row would otherwise convert slower than HBM delivers."""
    if w.dtype == tl.int8:
        bits = (w.to(tl.uint8, bitcast=True) ^ 0x80).to(tl.int32) | 0x4B000000
        wide = bits.to(tl.float32, bitcast=True) - 8388736.0
    else:
        wide = w.to(tl.float32)
    return wide


@triton.jit
def _block_scaled(x, s_row, k_idx, BLOCK_SK: tl.constexpr):
    """Block-wise fp8 (``BLOCK_SK`` > 0): x (float32) times the weight's block scale at each
    input, from this program's row of scales (one per BLOCK_SK inputs; the program's columns
    share one row). sum_k x_k * s_k * code_k is then the product with the dequantized weight."""
    if BLOCK_SK > 0:
        x = x * tl.load(s_row + k_idx // BLOCK_SK)
    return x


@triton.jit
def _chunked_sums(x_ptr, w_ptr, rn_load, k_lo, k_hi, stride_wn, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  CHUNK: tl.constexpr, PDL: tl.constexpr, s_row=None, BLOCK_SK: tl.constexpr = 0):
    """Row 0 of x[:, k_lo:k_hi] @ w[cols, k_lo:k_hi]^T in float32 [1, BLOCK_N]: each K tile is
    loaded as [BLOCK_N, BLOCK_K / CHUNK, CHUNK] and its runs of CHUNK products are summed in
    the thread that loaded them (no shuffles), into a [BLOCK_N, BLOCK_K / CHUNK] accumulator."""
    koff = tl.arange(0, BLOCK_K // CHUNK)[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
    w_tiles = w_ptr + rn_load[:, None, None] * stride_wn + koff[None, :, :]
    w = tl.load(w_tiles + k_lo)  # before the PDL wait: the weights are never written in a step
    pdl_prologue(PDL)
    acc = _run_sums(x_ptr, w, k_lo, koff, s_row, BLOCK_K, CHUNK, BLOCK_SK)
    for k0 in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
        acc += _run_sums(x_ptr, tl.load(w_tiles + k0), k0, koff, s_row, BLOCK_K, CHUNK, BLOCK_SK)
    return tl.sum(acc, axis=1)[None, :]


@triton.jit
def _run_sums(x_ptr, w, k0, koff, s_row, BLOCK_K: tl.constexpr, CHUNK: tl.constexpr, BLOCK_SK: tl.constexpr):
    """One K tile's runs of CHUNK products, [BLOCK_N, BLOCK_K / CHUNK]. Block-wise fp8: each
    run times its block's scale (a run never crosses a block: CHUNK divides BLOCK_SK), one
    scale and one multiply per run instead of per input."""
    sums = tl.sum(tl.load(x_ptr + k0 + koff).to(tl.float32)[None, :, :] * _widen(w), axis=2)
    if BLOCK_SK > 0:
        sums = sums * tl.load(s_row + (k0 + tl.arange(0, BLOCK_K // CHUNK) * CHUNK) // BLOCK_SK)[None, :]
    return sums


@triton.jit
def _partial_sums(x_ptr, w_ptr, rm_load, rn_load, k_lo, k_hi, stride_xm, stride_wn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
                  COMPUTE_BF16: tl.constexpr, NATIVE: tl.constexpr, PDL: tl.constexpr = False,
                  CHUNK: tl.constexpr = 0, s_row=None, BLOCK_SK: tl.constexpr = 0):
    """x[rows, k_lo:k_hi] @ w[cols, k_lo:k_hi]^T in float32 [BLOCK_M, BLOCK_N] (k_hi > k_lo).

    The first weight tile is loaded before the PDL prologue: the weights are never written
    during a step, so this program's weight stream starts while the kernel ahead drains."""
    if CHUNK > 0:  # one row (BLOCK_M == 1)
        sums = _chunked_sums(x_ptr, w_ptr, rn_load, k_lo, k_hi, stride_wn, BLOCK_N, BLOCK_K, CHUNK, PDL, s_row,
                             BLOCK_SK)
    else:
        sums = _tile_sums(x_ptr, w_ptr, rm_load, rn_load, k_lo, k_hi, stride_xm, stride_wn, BLOCK_M, BLOCK_N,
                          BLOCK_K, DOT, COMPUTE_BF16, NATIVE, PDL, s_row, BLOCK_SK)
    return sums


@triton.jit
def _tile_sums(x_ptr, w_ptr, rm_load, rn_load, k_lo, k_hi, stride_xm, stride_wn,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr,
               COMPUTE_BF16: tl.constexpr, NATIVE: tl.constexpr, PDL: tl.constexpr, s_row=None,
               BLOCK_SK: tl.constexpr = 0):
    """``_partial_sums`` on [BLOCK_M, BLOCK_N, BLOCK_K] FMA tiles or tensor-core dots."""
    code_ty = w_ptr.dtype.element_ty
    w_rows = w_ptr + rn_load[:, None] * stride_wn
    x_rows = x_ptr + rm_load[:, None] * stride_xm
    rk = k_lo + tl.arange(0, BLOCK_K)
    w = tl.load(w_rows + rk[None, :])  # [BLOCK_N, BLOCK_K]
    pdl_prologue(PDL)
    if DOT:
        # NATIVE: 8-bit codes times 8-bit codes on the tensor cores as they are (int8 into an
        # exact int32 sum); else both widen exactly to the 16-bit type the tensor cores take.
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32 if NATIVE and code_ty == tl.int8 else tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    acc = _tile_product(acc, _tile_x(x_rows, rk, s_row, BLOCK_SK), w, DOT, COMPUTE_BF16, NATIVE)
    for k0 in range(k_lo + BLOCK_K, k_hi, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        acc = _tile_product(acc, _tile_x(x_rows, rk, s_row, BLOCK_SK), tl.load(w_rows + rk[None, :]), DOT,
                            COMPUTE_BF16, NATIVE)
    return acc.to(tl.float32) if DOT else tl.sum(acc, axis=2)


@triton.jit
def _tile_x(x_rows, rk, s_row, BLOCK_SK: tl.constexpr):
    """One K tile of x [BLOCK_M, BLOCK_K]: as stored, or in float32 times the block scales."""
    if BLOCK_SK > 0:
        x = _block_scaled(tl.load(x_rows + rk[None, :]).to(tl.float32), s_row, rk[None, :], BLOCK_SK)
    else:
        x = tl.load(x_rows + rk[None, :])
    return x


@triton.jit
def _fused_gemv_kernel(
    x_ptr, w_ptr, sx_ptr, sw_ptr, bias_ptr, part_ptr, count_ptr, out_ptr, M, N, K, k_per_split,
    stride_xm, stride_wn, stride_sx, stride_om, bs_ptr, stride_bs,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
    HAS_SX: tl.constexpr, HAS_SW: tl.constexpr, HAS_BIAS: tl.constexpr, DOT: tl.constexpr,
    COMPUTE_BF16: tl.constexpr, NATIVE: tl.constexpr, CHUNK: tl.constexpr, PDL: tl.constexpr = False,
    BLOCK_SN: tl.constexpr = 1, BLOCK_SK: tl.constexpr = 0,
):
    # No masks in the loop: K is a multiple of BLOCK_K * SPLIT_K (the host checks), and rows /
    # columns past M / N re-read the last valid one (clamped index); only stores are masked.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn, rm, rn_load, rm_load = _tile_indices(pid_n, M, N, BLOCK_M, BLOCK_N)
    k_lo = pid_k * k_per_split
    s_row = bs_ptr + ((pid_n * BLOCK_N) // BLOCK_SN) * stride_bs  # block-wise fp8: the columns' scales
    acc = _partial_sums(x_ptr, w_ptr, rm_load, rn_load, k_lo, k_lo + k_per_split, stride_xm, stride_wn,
                        BLOCK_M, BLOCK_N, BLOCK_K, DOT, COMPUTE_BF16, NATIVE, PDL, CHUNK, s_row, BLOCK_SK)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    last = True
    if SPLIT_K > 1:
        tile = rm[:, None] * N + rn[None, :]
        tl.store(part_ptr + pid_k * M * N + tile, acc, mask=mask)
        tl.debug_barrier()  # every thread's partials written before the ticket is taken
        ticket = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        last = ticket == SPLIT_K - 1
        if last:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in range(SPLIT_K):  # slice order: the same sum whichever program is last
                acc += tl.load(part_ptr + s * M * N + tile, mask=mask, other=0.0, cache_modifier=".cg")
            tl.atomic_xchg(count_ptr + pid_n, 0, sem="relaxed", scope="gpu")
    if last:
        if HAS_SW:
            acc = acc * tl.load(sw_ptr + rn_load)[None, :]
        if HAS_SX:
            acc = acc * tl.load(sx_ptr + rm_load * stride_sx)[:, None]
        if HAS_BIAS:
            acc = acc + tl.load(bias_ptr + rn_load)[None, :].to(tl.float32)
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def fits(m: int, k: int, config: FusedGemvConfig) -> bool:
    return 1 <= m <= (1 if config.chunk else MAX_M) and k % (config.block_k * config.split_k) == 0


def fused_gemv(x: torch.Tensor, w: torch.Tensor, scale_x: torch.Tensor | None, scale_w: torch.Tensor | None,
               out_dtype: torch.dtype, bias: torch.Tensor | None = None,
               config: FusedGemvConfig = FusedGemvConfig(), block_scale: torch.Tensor | None = None,
               block: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """x [M <= 8, K] (values, or 8-bit codes with scale_x [M, 1] / [1, 1]), w [N, K] (values or
    8-bit codes with scale_w [N] / [1, N] float32) -> [M, N] in ``out_dtype``.
    K must be a multiple of block_k * split_k (``fits``).

    Block-wise fp8 (``block_scale`` [ceil(N / bn), ceil(K / bk)] float32 with ``block`` (bn, bk),
    no scale_x / scale_w; x in 16 bits): W = code * the scale of its block, activations
    unquantized (W8A16); config.block_n must divide bn (``fits_block``)."""
    m, k = x.shape
    n = w.shape[0]
    eight_bit = w.element_size() == 1
    if block_scale is not None and not fits_block(config, block, scale_x, scale_w, x):
        raise ValueError(f"a block-wise fp8 GEMV takes 16-bit x, no other scales, block_n dividing the block's "
                         f"{block[0]} rows and no native dot; got block_n {config.block_n}, x {x.dtype}")
    if config.native and not (config.dot and eight_bit and x.dtype == w.dtype):
        raise ValueError("a native config multiplies 8-bit codes of one type on the tensor cores")
    if config.chunk and (config.dot or m != 1 or config.block_k % config.chunk):
        raise ValueError("a chunk config sums runs of products of one row on multiply-add tiles "
                         "(no dot, M = 1, block_k a multiple of chunk)")
    if not fits(m, k, config) or w.shape[1] != k:
        raise ValueError(f"fused_gemv takes x [M <= {MAX_M}, K] with K a multiple of "
                         f"{config.block_k * config.split_k}, and w [N, K]; got {tuple(x.shape)}, {tuple(w.shape)}")
    if x.stride(1) != 1 or w.stride(1) != 1:
        raise ValueError("fused_gemv needs unit stride along K")
    out = torch.empty(m, n, dtype=out_dtype, device=x.device)
    grid_n = triton.cdiv(n, config.block_n)
    if config.split_k > 1 and grid_n > MAX_TICKETS:
        raise ValueError(f"fused_gemv split-K handles at most {MAX_TICKETS} column blocks")
    part = torch.empty(config.split_k, m, n, dtype=torch.float32, device=x.device) if config.split_k > 1 else out
    counters = ticket_counters(x.device, "fused_gemv") if config.split_k > 1 else out
    sx = scale_x.reshape(-1) if scale_x is not None else out
    sw = scale_w.reshape(-1) if scale_w is not None else out
    _fused_gemv_kernel[(grid_n, config.split_k)](
        x, w, sx, sw, bias if bias is not None else out, part, counters, out, m, n, k, k // config.split_k,
        x.stride(0), w.stride(0), 1 if scale_x is not None and scale_x.numel() > 1 else 0, out.stride(0),
        block_scale if block_scale is not None else out, block_scale.stride(0) if block_scale is not None else 0,
        BLOCK_M=max(16, triton.next_power_of_2(m)) if config.dot else triton.next_power_of_2(m),
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, SPLIT_K=config.split_k,
        HAS_SX=scale_x is not None, HAS_SW=scale_w is not None, HAS_BIAS=bias is not None, DOT=config.dot,
        COMPUTE_BF16=torch.bfloat16 in (x.dtype, w.dtype), NATIVE=config.native, CHUNK=config.chunk,
        BLOCK_SN=block[0] if block_scale is not None else 1, BLOCK_SK=block[1] if block_scale is not None else 0,
        num_warps=config.num_warps, num_stages=config.num_stages, **launch_kwargs(),
    )
    return out


def fits_block(config: FusedGemvConfig, block: tuple[int, int], scale_x: torch.Tensor | None = None,
               scale_w: torch.Tensor | None = None, x: torch.Tensor | None = None) -> bool:
    """Whether ``config`` can run a block-wise fp8 layer of ``block`` (bn, bk): a program's
    columns within one block row, the scales folded into 16-bit activations (one row's runs of
    ``chunk`` products inside one block)."""
    bn, bk = block
    return (bn > 0 and bk > 0 and bn % config.block_n == 0 and not config.native and scale_x is None
            and (not config.chunk or bk % config.chunk == 0)
            and scale_w is None and (x is None or x.element_size() == 2))


def quick_configs(m: int, eight_bit: bool = False) -> list[FusedGemvConfig]:
    """The candidates the engine's first-use tuners time for M rows (few compiles): the tiles
    that won some 8B decode shape in the sweeps (``benchmarks/gpu_gemv.py``): for one row the
    chunked multiply-add tiles; for 8-bit codes also the tensor-core tiles without widening,
    with deeper pipelines (three or four stages in flight), which won every int8 layer."""
    rows = triton.next_power_of_2(m)
    dots = [FusedGemvConfig(32, 256, 4, dot=True), FusedGemvConfig(32, 512, 4, dot=True),
            FusedGemvConfig(64, 256, 2, dot=True), FusedGemvConfig(16, 512, 4, dot=True)]
    fma = ([(8, 512, 1), (8, 1024, 1), (4, 1024, 1), (16, 256, 2)] if rows <= 2
           else [(4, 512, 1), (8, 256, 2)] if rows <= 4 else [])
    configs = [FusedGemvConfig(bn, bk, split) for bn, bk, split in fma] + dots
    if m == 1:  # chunked tiles: the best few per 8B layer in the sweep
        chunk, tiles = ((16, ((2, 1024, 2), (2, 2048, 2), (4, 2048, 2), (4, 2048, 4), (4, 2048, 8), (2, 4096, 4)))
                        if eight_bit else (8, ((2, 4096, 4), (1, 2048, 2), (4, 1024, 8), (4, 2048, 4))))
        configs += [FusedGemvConfig(bn, bk, 1, num_warps, chunk=chunk) for bn, bk, num_warps in tiles]
    if eight_bit:
        configs += [dataclasses.replace(c, native=True) for c in dots]
        configs += [FusedGemvConfig(bn, bk, split, num_warps, stages, dot=True, native=True)
                    for bn, bk, split, num_warps, stages in ((64, 256, 4, 4, 4), (64, 512, 4, 4, 3),
                                                             (128, 512, 1, 8, 3), (128, 512, 4, 8, 3))]
    return configs
