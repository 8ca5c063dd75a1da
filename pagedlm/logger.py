"""pagedlm's log output: INFO to stderr by default (start-up sizes, preemptions), like vLLM.
PAGEDLM_LOGGING_LEVEL (or vLLM's VLLM_LOGGING_LEVEL) changes the level;
PAGEDLM_CONFIGURE_LOGGING=0 (or VLLM_CONFIGURE_LOGGING=0) leaves the "pagedlm" logger to the
application, as does an application that configures it itself."""

from __future__ import annotations

import logging
import os
import sys

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
