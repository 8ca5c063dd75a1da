"""pagedlm's log output: INFO to stderr by default (start-up sizes, preemptions), like vLLM.
PAGEDLM_LOGGING_LEVEL (or vLLM's VLLM_LOGGING_LEVEL) changes the level;
PAGEDLM_CONFIGURE_LOGGING=0 (or VLLM_CONFIGURE_LOGGING=0) leaves the "pagedlm" logger to the
application, as does an application that configures it itself."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Hashable
from types import MethodType

_FORMAT = "%(levelname)s %(asctime)s [%(name)s] %(message)s"


def _env(name: str, default: str) -> str:
    """PAGEDLM_<name>, else vLLM's VLLM_<name>, else the default."""
    return os.environ.get(f"PAGEDLM_{name}") or os.environ.get(f"VLLM_{name}") or default


def configure_logging() -> None:
    root = logging.getLogger("pagedlm")
    if root.handlers or _env("CONFIGURE_LOGGING", "1") == "0":
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(_env("LOGGING_LEVEL", "INFO").upper())
    root.propagate = False


@functools.lru_cache(maxsize=None)
def _log_once(logger: logging.Logger, level: int, msg: str, *args: Hashable) -> None:
    logger.log(level, msg, *args, stacklevel=4)  # the line of the *_once call


def log_once(logger: logging.Logger, level: int, msg: str, *args: Hashable) -> None:
    """``logger.log(level, msg, *args)`` the first time this message and these arguments come,
    in this process (for pagedlm's own modules, which use plain ``logging`` loggers)."""
    _log_once(logger, level, msg, *args)


def _first_rank(scope: str) -> bool:
    """vLLM's log scopes: "process" logs in every process, "global" only on rank 0 of the
    distributed world, "local" only on each host's first rank (LOCAL_RANK 0)."""
    if scope == "process":
        return True
    dist = sys.modules.get("torch.distributed")  # never imports torch for a log line
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return True
    if scope == "global":
        return dist.get_rank() == 0
    return int(os.environ.get("LOCAL_RANK", dist.get_rank())) == 0


def _once(level: int) -> Callable[..., None]:
    def log_once(self: logging.Logger, msg: str, *args: Hashable, scope: str = "process") -> None:
        if scope not in ("process", "global", "local"):
            raise ValueError(f"scope must be 'process', 'global' or 'local', got {scope!r}")
        if _first_rank(scope):
            _log_once(self, level, msg, *args)

    return log_once


_ONCE_METHODS = {"debug_once": _once(logging.DEBUG), "info_once": _once(logging.INFO),
                 "warning_once": _once(logging.WARNING), "error_once": _once(logging.ERROR)}


def init_logger(name: str) -> logging.Logger:
    """vLLM's ``vllm.logger.init_logger``: ``logging.getLogger(name)`` with pagedlm's log output
    configured, plus ``debug_once`` / ``info_once`` / ``warning_once`` / ``error_once`` (the same
    message and arguments logged once per process; ``scope=`` as vLLM's). Name a plugin's logger
    under "pagedlm." (vLLM plugins use "vllm." + name) to share pagedlm's handler and level."""
    configure_logging()
    logger = logging.getLogger(name)
    for method_name, method in _ONCE_METHODS.items():
        setattr(logger, method_name, MethodType(method, logger))
    return logger
