"""Ticket counters for kernels whose split work is reduced by the last program to finish.

A kernel split into slices (split-K in a GEMV, KV segments in decode attention) can sum its
slices without a second launch: each program stores its partial result, then takes a ticket
from a counter of its output tile (an atomic add, acquire-release); the program that draws
the last ticket reads every partial, in slice order, writes the output and resets the
counter to zero. The counters therefore start and end every launch at zero, so one zeroed
buffer per (device, user) serves every launch and every CUDA-graph replay.

The buffer must exist before a graph that uses it is captured: made during capture, its
zeroing would be recorded into that graph instead of run, and it would live in the graph's
memory pool. Callers make it on their first eager call.
"""

from __future__ import annotations

import torch

MAX_TICKETS = 1 << 16  # output tiles one launch may count
_buffers: dict[tuple[torch.device, str], torch.Tensor] = {}


def ticket_counters(device: torch.device, user: str) -> torch.Tensor:
    """The zeroed int32 counters [MAX_TICKETS] of ``user`` on ``device`` (one buffer per user:
    kernels of different users never share a counter)."""
    key = (device, user)
    if key not in _buffers:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{user}: make the ticket counters on an eager call before capturing a CUDA graph")
        # setdefault: tuner threads compiling side by side (precompile.warm) share one buffer
        _buffers.setdefault(key, torch.zeros(MAX_TICKETS, dtype=torch.int32, device=device))
    return _buffers[key]
