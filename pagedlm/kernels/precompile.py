"""Compiling a first-use tuner's candidates side by side.

The tuners (``gemv``, ``scaled_gemv``, ``bucket_tuner``, ``wna16_tuning``) run tens of kernel
configs per weight shape once, then time them. On a cold Triton cache compiling them costs more
than timing them, and one after another they leave all but one CPU core idle. Triton releases
the GIL while LLVM optimises a kernel and while ptxas assembles it, so the tuners first run each
candidate once on a pool of threads (``warm``): the kernels compile in parallel and land in
Triton's cache, and the tuner's own pass, unchanged, finds them built. A candidate that fails
here (more shared memory than the card has) is left to that pass, which skips it as before.

``PAGEDLM_COMPILE_THREADS`` sets the pool's size (default: the CPU cores this process may use,
at most 16); 1 compiles one after another, as before.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable

import torch

logger = logging.getLogger(__name__)

MAX_THREADS = 16


def threads() -> int:
    value = os.environ.get("PAGEDLM_COMPILE_THREADS")
    if value is not None:
        try:
            count = int(value)
        except ValueError:
            raise ValueError(f"PAGEDLM_COMPILE_THREADS must be a whole number, not {value!r}") from None
        if count < 1:
            raise ValueError(f"PAGEDLM_COMPILE_THREADS must be at least 1, not {count}")
        return count
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, cores))


def warm(calls: Iterable[Callable[[], object]], device: torch.device) -> int:
    """Run every call once on a pool of threads (on ``device``, its default stream), ignoring
    what they return or raise, and wait for the device. Returns how many raised. Nothing runs
    with one thread or off CUDA: the caller's own pass then compiles as it goes."""
    calls = list(calls)
    count = min(threads(), len(calls))
    if device.type != "cuda" or count <= 1:
        return 0
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.synchronize(device)  # what the caller queued on its stream (the inputs) is done

    def quiet(call: Callable[[], object]) -> bool:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - the tuner's own pass meets it again and skips it
            logger.debug("precompile: a candidate failed: %s", exc)
            return False
        return True

    with ThreadPoolExecutor(count, thread_name_prefix="pagedlm-compile",
                            initializer=torch.cuda.set_device, initargs=(device,)) as pool:
        failed = sum(not ok for ok in pool.map(quiet, calls))
    torch.cuda.synchronize(device)  # the threads' launches (on the default stream) are done
    return failed
