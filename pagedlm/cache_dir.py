"""Where pagedlm keeps files it makes for itself between runs (the demo checkpoint, GGUF
conversions, load-time kernel choices): ``$PAGEDLM_CACHE_DIR``, default ``~/.cache/pagedlm``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("PAGEDLM_CACHE_DIR", Path.home() / ".cache" / "pagedlm"))
