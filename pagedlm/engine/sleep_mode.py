"""vLLM's sleep mode (``LLM.sleep`` / ``wake_up``, ``--enable-sleep-mode``): its errors and checks.

Sleeping frees the KV cache (its prefix cache is emptied first) and offloads (level 1) or
discards (level 2) the model weights; ``wake_up`` restores them, all or by tag. How the
runner does it: pagedlm/worker/model_runner.py (``ModelRunner.sleep``); docs/sleep_mode.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

SLEEP_TAGS = ("weights", "kv_cache")


class SleepModeError(RuntimeError):
    """A sleep-mode call that cannot be honoured: sleep mode is off, a bad level or tag, or
    requests are still running when sleep is asked for."""


class EngineSleepingError(RuntimeError):
    """A request reached an engine that sleeps; ``wake_up`` it first."""


def check_sleep_args(enabled: bool, level: int | None = None, tags: list[str] | None = None) -> None:
    if not enabled:
        raise SleepModeError("Sleep mode is not enabled: start the engine with enable_sleep_mode=True "
                             "(--enable-sleep-mode)")
    if level is not None and (isinstance(level, bool) or level not in (1, 2)):
        raise SleepModeError(f"sleep level must be 1 (offload the weights) or 2 (discard them), got {level!r}")
    if tags is not None:
        unknown = sorted(set(tags) - set(SLEEP_TAGS))
        if unknown or isinstance(tags, str):
            raise SleepModeError(f"wake_up tags must be a list of {list(SLEEP_TAGS)}, got {tags!r}")


SLEEPING_MESSAGE = "The engine is sleeping (sleep mode); wake it up before sending requests."


@contextlib.contextmanager
def utility_errors_typed() -> Iterator[None]:
    """Around a call of an engine-core utility: an engine-core process reports a utility's
    error as text ("SleepModeError: ..."); the caller gets the same typed error again."""
    try:
        yield
    except (RuntimeError, ValueError, NotImplementedError) as e:
        text = str(e)
        for cls in (SleepModeError, ValueError, NotImplementedError):
            prefix = f"{cls.__name__}: "
            if text.startswith(prefix):
                raise cls(text[len(prefix):]) from None
        raise
