"""Per-shape kernel choice for the W4A16 / W8A16 GEMM, measured once at model load.

For each distinct weight shape (N, K, bits, group size) the loader times a few tile configs
per bucket of M, plus the dequantize + cuBLAS path, on the real device and keeps the fastest.
``triton_wna16.pick_config`` then reads the table (pure Python, so CUDA-graph capture and
replay see the same choice). The table is process-local and deterministic for a given device
state up to timing noise; every entry is a correct kernel, so noise only costs speed.

This module holds no Triton code and imports the kernel module lazily: the table is read on
every call and must stay importable wherever the kernel module is.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from pagedlm.kernels import precompile, tuning_cache
from pagedlm.kernels.timing import decode_time_ms

logger = logging.getLogger(__name__)

# Upper ends of the M buckets that get a measured choice; above the last, dequantize + cuBLAS
# (compute-bound GEMMs, where cuBLAS wins and the dequant is amortised over many rows).
SMALL_M_BUCKETS = (1, 2, 4, 8, 16)
TILED_M_BUCKETS = (32, 64, 128, 256, 512)
# with the cutlass kind (a layer that keeps its operands): measured up to here, where it can
# still beat dequantize + cuBLAS (H200, Llama-3.1-8B layers: 1.05x bf16 at 2,048 rows against
# 1.18x; 1.13x at 16,384 against 1.06x)
LARGE_M_BUCKETS = (1024, 2048, 4096)
NOT_TUNED: Any = object()

# (n, k, bits, group_size, act-order row groups) -> [(m_max, config or None for dequantize + cuBLAS)]
_TABLE: dict[tuple[int, int, int, int, bool], list[tuple[int, Any]]] = {}

# gemv shapes for M = 1 (block_n, num_warps, num_stages, unroll, waves of programs per SM):
# wide tiles amortise each x value over more columns, more waves keep more words in flight.
_GEMV_SHAPES = ((128, 4, 3, 1, 2.0), (128, 4, 3, 1, 4.0), (256, 8, 3, 1, 4.0), (256, 4, 3, 1, 2.0),
                (128, 4, 2, 2, 4.0))
# the same for the paired bf16 form (4-bit, whole groups per K tile: config_fits), up to
# _PAIR_MAX_M rows: the best of a graph-timed grid for each Llama-3.1-8B layer on an H200
# (one stage, i.e. the words loaded straight into registers, won at every layer)
_PAIR_MAX_M = 4
_PAIR_SHAPES = ((256, 4, 1, 1, 2.0), (256, 4, 1, 1, 4.0), (512, 4, 1, 2, 4.0), (512, 4, 3, 1, 2.0))
# tensor-core shapes (kind, block_m, block_n, num_warps, num_stages, unroll). The wide kinds
# (one MMA step per packed K tile, or two: unroll) took 0.68-0.97x the time of the dot kinds at
# M = 16 and 0.59-0.81x at M = 64 on an H200 (Llama-3.1-8B layers, benchmarks/gpu_w4a16_tiles.py);
# one dot shape of each kind stays for layers where those win. The swapped wide tiles of 128-256
# rows (the weight as the step's register operand) won qkv, down and o at M = 128 (0.78-0.88x
# the time of the best other kind) and gate_up at M = 256 (0.97x dequantize + cuBLAS).
# the mma kind (4-bit, M <= 8: each lane dequantizes its own tensor-core fragment): (num_warps,
# unroll, waves); the best per Llama-3.1-8B layer on an H200 at M = 1 and 8 (BENCHMARKS.md,
# session 21): at M = 8 0.69-0.73x the time of the tiles above, at M = 1 it won o_proj.
_MMA_MAX_M = 8
_MMA_SHAPES = ((4, 2, 4.0), (4, 2, 8.0), (4, 1, 4.0), (8, 2, 4.0))


# the CUDA kind (``cuda_w4a16``, M <= 8): (num_warps, unroll, split_k); the best per
# Llama-3.1-8B layer on an H200 at M = 1, 4 and 8 (BENCHMARKS.md, session 24): 8 warps without
# split for qkv and o, 4 warps for gate_up, split 2-4 for down.
_CUDA_SHAPES = ((8, 1, 1), (4, 1, 1), (8, 1, 2), (4, 1, 2), (4, 1, 4), (8, 4, 1))


def cuda_enabled() -> bool:
    """Whether the CUDA kind is among the candidates (its library builds on this machine)."""
    from pagedlm.kernels import cuda_w4a16  # noqa: PLC0415

    return cuda_w4a16.available()


def mma_enabled() -> bool:
    """``PAGEDLM_W4A16_MMA=0`` leaves the mma kind out of the candidates (an A/B switch)."""
    return os.environ.get("PAGEDLM_W4A16_MMA", "1") != "0"
_SMALL_TILE_SHAPES = (("wide_t", 16, 128, 8, 3, 2), ("wide_t", 16, 128, 8, 2, 2), ("wide_t", 16, 64, 4, 3, 2),
                      ("dot_t", 16, 128, 4, 3, 1))
_TILED_SHAPES = (("wide", 32, 128, 4, 4, 2), ("wide", 64, 256, 8, 4, 2), ("wide", 64, 128, 4, 4, 2),
                 ("wide", 128, 256, 8, 3, 1), ("wide", 128, 128, 8, 3, 1), ("wide", 128, 128, 8, 3, 2),
                 ("wide_t", 128, 64, 4, 3, 1), ("wide_t", 256, 128, 8, 3, 1), ("dot", 64, 128, 4, 3, 1),
                 ("dot_t", 64, 64, 4, 3, 1))


def lookup(m: int, n: int, k: int, bits: int, group_size: int, row_groups: bool = False) -> Any:
    """The measured choice for M rows, None for dequantize + cuBLAS, or NOT_TUNED."""
    entries = _TABLE.get((n, k, bits, group_size, row_groups))
    if entries is None:
        return NOT_TUNED
    for m_max, choice in entries:
        if m <= m_max:
            return choice
    return None


def _k_tiles(k: int, bits: int, group_size: int) -> int:
    from pagedlm.kernels.wna16_reference import interleave_rows  # noqa: PLC0415

    return k // (interleave_rows(k, group_size, bits) * (32 // bits))


def make_config(kind: str, block_m: int, block_n: int, m: int, n: int, k: int, bits: int, group_size: int,
                num_sms: int, num_warps: int, num_stages: int, waves: float, unroll: int = 1,
                dequant: str = "") -> Any:
    """A config whose split-K puts about ``waves`` programs on each SM for M rows."""
    from pagedlm.kernels.triton_wna16 import KernelConfig, auto_split_k  # noqa: PLC0415

    tiles = -(-n // block_n) * -(-m // block_m)
    split = auto_split_k(tiles, _k_tiles(k, bits, group_size), num_sms, waves, min_tiles=max(2, unroll))
    return KernelConfig(kind, block_m, block_n, split, num_warps, num_stages, unroll, dequant)


def small_m_candidates(m: int, n: int, k: int, bits: int, group_size: int, num_sms: int,
                       row_groups: bool = False) -> list[Any]:
    """Decode-sized M (<= 16): the FMA GEMV (M = 1), its paired form (M <= 4), the mma kind
    (M <= 8) and 16-row tensor-core tiles."""
    from pagedlm.kernels.triton_wna16 import KernelConfig, config_fits  # noqa: PLC0415

    out = []
    if m == 1:
        out += [make_config("gemv", 1, bn, m, n, k, bits, group_size, num_sms, w, s, waves, unroll)
                for bn, w, s, unroll, waves in _GEMV_SHAPES]
    if m <= _PAIR_MAX_M:  # a program per row: the rows after the first read the weight from L2
        out += [make_config("gemv", 1, bn, m, n, k, bits, group_size, num_sms, w, s, waves, unroll, "pair")
                for bn, w, s, unroll, waves in _PAIR_SHAPES]
    if m <= _MMA_MAX_M and mma_enabled():
        out += [make_config("mma", 8, 16 * w, m, n, k, bits, group_size, num_sms, w, 1, waves, unroll)
                for w, unroll, waves in _MMA_SHAPES]
    if m <= _MMA_MAX_M and bits == 4 and n % 4 == 0 and cuda_enabled():
        out += [KernelConfig("cuda", 8, 32, split, w, 1, unroll) for w, unroll, split in _CUDA_SHAPES]
    out += [make_config(kind, bm, bn, m, n, k, bits, group_size, num_sms, w, s, 2.0, unroll)
            for kind, bm, bn, w, s, unroll in _SMALL_TILE_SHAPES]
    return [c for c in dict.fromkeys(out) if config_fits(c, k, group_size, bits, row_groups)]


def tiled_candidates(m: int, n: int, k: int, bits: int, group_size: int, num_sms: int) -> list[Any]:
    """Batched decode / prefill (M > 16): tensor-core tiles (split only to fill one wave), and
    dequantize + cuBLAS (None)."""
    from pagedlm.kernels.triton_wna16 import config_fits  # noqa: PLC0415

    out = [make_config(kind, bm, bn, m, n, k, bits, group_size, num_sms, w, s, 1.0, unroll)
           for kind, bm, bn, w, s, unroll in _TILED_SHAPES if bm <= max(32, m)]
    return [c for c in dict.fromkeys(out) if config_fits(c, k, group_size, bits)] + [None]


def cutlass_candidates(m: int, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> list[Any]:
    """The cutlass kind's built tiles for ``dtype`` activations, for a layer that keeps its
    operands (M >= 16)."""
    from pagedlm.kernels import cutlass_w4a16  # noqa: PLC0415
    from pagedlm.kernels.triton_wna16 import KernelConfig  # noqa: PLC0415

    if m < SMALL_M_BUCKETS[-1]:
        return []
    return [KernelConfig("cutlass", tile_m, tile_n, 1, 4, 1)
            for tile_n, tile_m, _ in cutlass_w4a16.built_tiles(device, dtype=dtype)]


def candidates(m: int, n: int, k: int, bits: int, group_size: int, num_sms: int,
               row_groups: bool = False) -> list[Any]:
    if m <= SMALL_M_BUCKETS[-1]:
        return small_m_candidates(m, n, k, bits, group_size, num_sms, row_groups) + [None]
    if m > TILED_M_BUCKETS[-1]:
        return [None]  # Triton's tiles lose to dequantize + cuBLAS there (the cutlass kind may not)
    return tiled_candidates(m, n, k, bits, group_size, num_sms)


def run_choice(choice: Any, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               row_groups: torch.Tensor | None, group_size: int, bits: int,
               cutlass_ops: tuple | None = None) -> torch.Tensor:
    from pagedlm.kernels import cutlass_w4a16, triton_wna16  # noqa: PLC0415

    if choice is None:
        return x @ triton_wna16.wna16_dequantize(qweight, scales, zeros, row_groups, group_size, bits)
    if choice.kind == "cutlass":
        return cutlass_w4a16.gemm(x, *cutlass_ops, group_size, cutlass_w4a16.tile_of(choice.block_n, choice.block_m))
    return triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, row_groups, group_size, bits, choice)


def tune(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, row_groups: torch.Tensor | None,
         group_size: int, bits: int, cutlass_ops: tuple | None = None) -> None:
    """Measure and record the fastest choice per M bucket for this weight shape (once; a
    start with the same card, software and kernels reads it from ``tuning_cache``).
    ``cutlass_ops``: the layer's operands for the cutlass kind, which then joins the
    candidates (layers of this shape without them run ``default_config`` where it wins)."""
    k, n = qweight.shape[0] * (32 // bits), qweight.shape[1]
    key = (n, k, bits, group_size, row_groups is not None)
    if key in _TABLE or qweight.device.type != "cuda":
        return
    from pagedlm.kernels.triton_wna16 import KernelConfig  # noqa: PLC0415

    entries = tuning_cache.cached("wna16", (*key, scales.dtype, mma_enabled(), cuda_enabled(), cutlass_ops is not None),
                                  qweight.device, (KernelConfig,),
                                  lambda: _measure(qweight, scales, zeros, row_groups, group_size, bits, key,
                                                   cutlass_ops))
    _TABLE[key] = entries
    logger.info("w4a16 kernels for N=%d K=%d (%d-bit, group %d): %s", n, k, bits, group_size,
                ", ".join(f"M<={m}: {describe(c)}" for m, c in entries))


def _measure(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, row_groups: torch.Tensor | None,
             group_size: int, bits: int, key: tuple, cutlass_ops: tuple | None = None) -> list[tuple[int, Any]]:
    """The fastest choice per M bucket, timed on the device (``key``: the table's, for the log).
    A candidate whose product disagrees with dequantize + cuBLAS's is dropped (logged): a
    kernel wrong on some shape costs speed there, never correctness."""
    n, k = key[0], key[1]
    num_sms = torch.cuda.get_device_properties(qweight.device).multi_processor_count
    buckets = SMALL_M_BUCKETS + TILED_M_BUCKETS + (LARGE_M_BUCKETS if cutlass_ops is not None else ())
    xs = {m: torch.randn(m, k, device=qweight.device, dtype=scales.dtype) for m in buckets}
    choices = {m: candidates(m, n, k, bits, group_size, num_sms, row_groups is not None)
               + (cutlass_candidates(m, qweight.device, scales.dtype) if cutlass_ops is not None else [])
               for m in buckets}

    def runner(choice: Any, x: torch.Tensor):
        return lambda: run_choice(choice, x, qweight, scales, zeros, row_groups, group_size, bits, cutlass_ops)

    # The Triton kinds compile side by side first (the CUDA C++ kinds are built libraries).
    precompile.warm([runner(c, xs[m]) for m in buckets for c in choices[m]
                     if c is not None and c.kind not in ("cuda", "cutlass")], qweight.device)
    entries: list[tuple[int, Any]] = []
    for m_max in buckets:
        x = xs[m_max]
        expect = run_choice(None, x, qweight, scales, zeros, row_groups, group_size, bits).float()
        timed = []
        for choice in choices[m_max]:
            try:
                run = runner(choice, x)
                err = relative_error(run(), expect)  # also compiles it, outside the timing graph
                if not err < AGREEMENT:
                    logger.warning("w4a16 config %s disagrees with dequantize + cuBLAS on N=%d K=%d at M=%d "
                                   "(relative error %.2e); not used", describe(choice), n, k, m_max, err)
                    continue
                timed.append((decode_time_ms(run, qweight.device), choice))
            except Exception as exc:  # noqa: BLE001 - a config the device cannot run (resources) is skipped
                logger.debug("w4a16 config %s failed on %s: %s", choice, key, exc)
        # Nothing ran (should not happen): the dequantize path is always correct.
        entries.append((m_max, min(timed, key=lambda t: t[0])[1] if timed else None))
    return entries


AGREEMENT = 2e-2  # relative error (Frobenius) a candidate may show against dequantize + cuBLAS


def relative_error(out: torch.Tensor, expect: torch.Tensor) -> float:
    return ((out.float() - expect).norm() / expect.norm().clamp_min(1e-12)).item()


def describe(choice: Any) -> str:
    """kind:BMxBN/sSPLIT/wWARPS/pSTAGES[/uUNROLL][/f32|/half|/int|/pair] (the dequant form when not
    the kind's default: f32 for gemv, half for the tensor-core kinds)."""
    if choice is None:
        return "dequant+cuBLAS"
    if choice.kind == "cutlass":
        return f"cutlass:{choice.block_n}x{choice.block_m}"
    default = "f32" if choice.kind == "gemv" else "half"
    tag = (f"/u{choice.unroll}" if choice.unroll != 1 else "") + (f"/{choice.dequant}" if choice.dequant != default
                                                                  else "")
    return (f"{choice.kind}:{choice.block_m}x{choice.block_n}/s{choice.split_k}/w{choice.num_warps}"
            f"/p{choice.num_stages}{tag}")
