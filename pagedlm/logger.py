"""pagedlm's log output: INFO to stderr by default (start-up sizes, preemptions), like vLLM.
PAGEDLM_LOGGING_LEVEL (a debug switch) changes the level; an application that configures
the "pagedlm" logger itself is left alone."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(levelname)s %(asctime)s [%(name)s] %(message)s"


def configure_logging() -> None:
    root = logging.getLogger("pagedlm")
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%m-%d %H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(os.environ.get("PAGEDLM_LOGGING_LEVEL", "INFO").upper())
    root.propagate = False
