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

import dataclasses
import logging
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)

# Upper ends of the M buckets that get a measured choice; above the last, dequantize + cuBLAS
# (compute-bound GEMMs, where cuBLAS wins and the dequant is amortised over many rows).
SMALL_M_BUCKETS = (1, 4, 16)
TILED_M_BUCKETS = (32, 64, 128, 256, 512)
NOT_TUNED: Any = object()

# (n, k, bits, group_size) -> [(m_max, config or None for dequantize + cuBLAS)]
_TABLE: dict[tuple[int, int, int, int], list[tuple[int, Any]]] = {}


def lookup(m: int, n: int, k: int, bits: int, group_size: int) -> Any:
    """The measured choice for M rows, None for dequantize + cuBLAS, or NOT_TUNED."""
    entries = _TABLE.get((n, k, bits, group_size))
    if entries is None:
        return NOT_TUNED
    for m_max, choice in entries:
        if m <= m_max:
            return choice
    return None


def small_m_candidates(n: int, k: int, num_sms: int) -> list[Any]:
    from pagedlm.kernels.triton_wna16 import KernelConfig, auto_split_k  # noqa: PLC0415

    shapes = [(64, 128, 4, 4, False), (64, 128, 4, 4, True), (128, 128, 4, 3, True), (32, 256, 4, 3, False),
              (128, 64, 4, 4, False)]
    configs = [KernelConfig(16, bn, bk, auto_split_k(n, k, bn, bk, num_sms), w, s, r) for bn, bk, w, s, r in shapes]
    return configs + [dataclasses.replace(configs[0], magic_dequant=False)]


def tiled_candidates(m: int) -> list[Any]:
    from pagedlm.kernels.triton_wna16 import KernelConfig  # noqa: PLC0415

    configs = [KernelConfig(32, 64, 128, 1, 4, 4), KernelConfig(64, 128, 64, 1, 4, 4),
               KernelConfig(128, 128, 64, 1, 8, 3), KernelConfig(128, 128, 64, 1, 8, 3, reshape_unpack=True),
               KernelConfig(64, 256, 64, 1, 8, 3), KernelConfig(128, 128, 64, 1, 8, 3, magic_dequant=False)]
    return [c for c in configs if c.block_m <= max(32, m)] + [None]


def time_ms(fn: Callable[[], Any], iters: int = 20) -> float:
    """Mean time of one call over ``iters`` back-to-back runs after two warm-ups (CUDA events)."""
    for _ in range(2):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def run_choice(choice: Any, x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
               row_groups: torch.Tensor | None, group_size: int, bits: int) -> torch.Tensor:
    from pagedlm.kernels import triton_wna16  # noqa: PLC0415

    if choice is None:
        return x @ triton_wna16.wna16_dequantize(qweight, scales, zeros, row_groups, group_size, bits)
    return triton_wna16.wna16_gemm_with_config(x, qweight, scales, zeros, row_groups, group_size, bits, choice)


def tune(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, row_groups: torch.Tensor | None,
         group_size: int, bits: int) -> None:
    """Measure and record the fastest choice per M bucket for this weight shape (once)."""
    k, n = qweight.shape[0] * (32 // bits), qweight.shape[1]
    key = (n, k, bits, group_size)
    if key in _TABLE or qweight.device.type != "cuda":
        return
    num_sms = torch.cuda.get_device_properties(qweight.device).multi_processor_count
    entries: list[tuple[int, Any]] = []
    for m_max in SMALL_M_BUCKETS + TILED_M_BUCKETS:
        x = torch.randn(m_max, k, device=qweight.device, dtype=scales.dtype)
        candidates = small_m_candidates(n, k, num_sms) if m_max <= 16 else tiled_candidates(m_max)
        timed = []
        for choice in candidates:
            try:
                timed.append((time_ms(lambda: run_choice(choice, x, qweight, scales, zeros, row_groups, group_size,
                                                         bits)), choice))
            except Exception as exc:  # noqa: BLE001 - a config the device cannot run (resources) is skipped
                logger.debug("w4a16 config %s failed on %s: %s", choice, key, exc)
        # Nothing ran (should not happen): the dequantize path is always correct.
        entries.append((m_max, min(timed, key=lambda t: t[0])[1] if timed else None))
    _TABLE[key] = entries
    logger.info("w4a16 kernels for N=%d K=%d (%d-bit, group %d): %s", n, k, bits, group_size,
                ", ".join(f"M<={m}: {describe(c)}" for m, c in entries))


def describe(choice: Any) -> str:
    if choice is None:
        return "dequant+cuBLAS"
    tag = ("r" if choice.reshape_unpack else "") + ("" if choice.magic_dequant else "i")
    return f"{choice.block_m}x{choice.block_n}x{choice.block_k}/s{choice.split_k}{tag}"
