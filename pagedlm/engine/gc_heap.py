"""Python's cyclic garbage collector and a long-running engine.

A full (oldest-generation) collection walks every tracked object in the process: the model's
modules and parameters, CUDA graphs' Python state, tokenizers, the imported libraries —
hundreds of thousands of objects, 0.1–0.3 s a walk, during which the device waits. The engine
creates few long-lived objects per step, but enough that such a walk happens every hundred-odd
steps at 1,000 running requests (on the CPU, 1,024 requests of a tiny model over 200 steps:
178–227 ms of full collections; with the start-up heap frozen, 30–40 ms). Moving what exists
at start-up into the permanent generation (``gc.freeze``, as vLLM does in its engine-core and
API-server processes) leaves the collector only the objects made since.

- A process that hosts one engine for its life (the engine-core process, ``pagedlm serve``)
  freezes once, after start-up: ``freeze_startup_heap()``.
- The offline ``LLM`` lives in the user's process, which may build and drop several engines:
  its generate loop runs under ``heap_frozen()``, which unfreezes at the end, so an engine
  dropped later is still collected.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


def freeze_startup_heap() -> None:
    """Collect start-up garbage, then exempt everything left from later collections."""
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """The objects that exist now are exempt from collections until the block ends (garbage
    among them is collected afterwards)."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
