"""How pagedlm starts its own processes: engine cores (engine/core_launcher.py) and CPU
tensor / pipeline-parallel workers (executor/multiproc.py).

On CPU, from a forkserver: a process that imported torch, transformers and pagedlm's engine
once and forks every child from there, so a child does not pay those imports again (about
7 s of a 2-core host's time each). The forkserver belongs to the process that started it and
ends with it; ``start_early`` starts it at the top of ``pagedlm serve``, so its imports run
beside the server's own start-up instead of after it.

On CUDA, plain spawn: a fresh interpreter per process can never inherit CUDA state, and a
few seconds of imports are small next to loading a GPU model.

A forkserver's child starts with the environment the forkserver had when it started, not
its parent's current one: launchers pass ``child_env()`` along and the child calls
``apply_env`` first thing, so a variable set or removed after the forkserver started still
reaches the child (only what torch or transformers read while being imported keeps the
forkserver's value).
"""

from __future__ import annotations

import atexit
import glob
import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver
import os
import signal
from collections.abc import Iterable

# What the forkserver imports before it forks anything (import errors are ignored there).
# transformers.activations is most of what any model's config class costs to import (it pulls
# in accelerate and the hub-kernel integration: 2 s).
PRELOAD = ("torch", "transformers", "transformers.configuration_utils", "transformers.activations",
           "transformers.models.auto.configuration_auto", "pagedlm.engine.engine_core", "pagedlm.engine.core_proc",
           "pagedlm.worker.model_runner", "pagedlm.entrypoints.llm")


def context(device: str, preload: Iterable[str] = ()) -> multiprocessing.context.BaseContext:
    """The context to start a child of an engine on ``device`` ("cpu" or "cuda") with;
    ``preload``: more modules for the forkserver to import (used only if it is not running
    yet)."""
    if device == "cuda":
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([*PRELOAD, *(m for m in preload if m not in PRELOAD)])
    return ctx


def start_early(device: str, preload: Iterable[str] = ()) -> bool:
    """Start the forkserver now (its imports then overlap the caller's) when ``device`` (a
    ``--device`` value) will resolve to the CPU: "cpu", or "auto" on a host without NVIDIA
    devices; ``preload``: modules the coming children need beyond ``PRELOAD``. Only a head
    start: which context a child gets is ``context``'s choice. Returns whether it started one."""
    if device == "cuda" or (device == "auto" and glob.glob("/dev/nvidia[0-9]*")):
        return False
    context("cpu", preload)
    multiprocessing.forkserver.ensure_running()
    atexit.register(_stop_forkserver)
    return True


def _stop_forkserver() -> None:
    """At exit: end the forkserver now rather than after its imports. A server that refuses its
    options exits within seconds of starting, and the forkserver, which shares its stdout and
    stderr, would hold them open (a pipe reading the server's output would not end) until its
    imports are done. Cores it forked are stopped before the server exits; any left notice
    their parent is gone."""
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except OSError:  # already gone and reaped
        pass


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a child should run with: this process's, plus ``extra``."""
    return {**os.environ, **(extra or {})}


def apply_env(env: dict[str, str]) -> None:
    """In the child: make ``env`` the whole environment (variables its parent removed go too)."""
    os.environ.clear()
    os.environ.update(env)


def set_process_name(name: str) -> None:
    """Name this process for ``ps`` / ``top`` (Linux: the 15-character ``comm``; a no-op elsewhere).
    A forkserver's children would otherwise all show the forkserver's command line."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def thread_lock_progress_bars() -> None:
    """Give tqdm a thread lock in this process. Its default lock holds a multiprocessing
    semaphore (to share a terminal between processes), which a process that ends with
    ``os._exit`` (an engine core) never unlinks: the resource tracker then warns of a leaked
    semaphore when the server stops. A process's own progress bars (loading a GGUF file) need
    only a thread lock."""
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
