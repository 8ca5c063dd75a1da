"""Default sampling parameters from a checkpoint's ``generation_config.json``, as vLLM's
``--generation-config`` does: ``auto`` reads the model's file, ``vllm`` ignores it, a
directory reads that directory's file instead.

Only the fields the model creator set away from transformers' defaults count (vLLM uses
``GenerationConfig.to_diff_dict()`` the same way), and only these sampling fields:
temperature, top_p, top_k, min_p, repetition_penalty and max_new_tokens (as max_tokens).
Request fields override them; max_tokens is a cap, as in vLLM. ``--override-generation-config``
sets the same fields by their generation-config names, over the file's (or alone, with
``--generation-config vllm``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pagedlm.config import ConfigError

logger = logging.getLogger(__name__)

GENERATION_CONFIG_FILE = "generation_config.json"

# generation_config.json field -> SamplingParams field
_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def _generation_dir(mode: str, model_dir: str) -> Path | None:
    if mode == "vllm":
        return None
    if mode == "auto":
        path = Path(model_dir)
        return path if (path / GENERATION_CONFIG_FILE).is_file() else None
    path = Path(mode).expanduser()
    if not (path / GENERATION_CONFIG_FILE).is_file():
        raise ConfigError(f"--generation-config must be 'auto', 'vllm' or a directory holding "
                          f"{GENERATION_CONFIG_FILE}; {mode!r} is none of these")
    return path


def read_generation_defaults(mode: str, model_dir: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """SamplingParams field -> default value; empty when there is nothing to apply.
    ``overrides`` (--override-generation-config, generation-config field names) go on top of
    the file's fields, or stand alone with ``mode`` 'vllm', as in vLLM."""
    defaults: dict[str, Any] = {}
    directory = _generation_dir(mode, model_dir)
    if directory is not None:
        from transformers import GenerationConfig

        try:
            diff = GenerationConfig.from_pretrained(str(directory)).to_diff_dict()
        except (OSError, ValueError) as e:
            raise ConfigError(f"could not read {directory / GENERATION_CONFIG_FILE}: {e}") from e
        defaults = {ours: diff[theirs] for theirs, ours in _FIELDS.items() if diff.get(theirs) is not None}
        _check(defaults, f"{directory / GENERATION_CONFIG_FILE} sets a sampling default pagedlm cannot use",
               "start with --generation-config vllm to ignore it")
    if overrides:
        unknown = sorted(set(overrides) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"--override-generation-config: unknown field(s) {unknown}; it takes "
                              f"{sorted(_FIELDS)}")
        defaults.update({_FIELDS[key]: value for key, value in overrides.items()})
        _check(defaults, "--override-generation-config sets a sampling default pagedlm cannot use",
               "fix the value")
    return defaults


def _check(defaults: dict[str, Any], what: str, remedy: str) -> None:
    from pagedlm.sampling_params import SamplingParams

    try:
        SamplingParams(**defaults)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{what} ({e}); {remedy}") from e


def log_generation_defaults(defaults: dict[str, Any]) -> None:
    if defaults:
        logger.info("Default sampling parameters have been overridden by the model's generation config: %s. "
                    "Start with --generation-config vllm to use pagedlm's defaults instead.", defaults)
