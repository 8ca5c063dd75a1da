"""vLLM's --hf-overrides: values set on (or merged into) the model's Hugging Face config before
anything reads it."""

from __future__ import annotations

import logging
from typing import Any

from pagedlm.config import ConfigError


# Top-level RoPE keys that transformers 5 keeps inside ``config.rope_parameters`` (for models
# with per-layer-type RoPE, e.g. Gemma 3: (the layer type, its key); None = every layer type).
_ROPE_KEYS = {"rope_theta": ("full_attention", "rope_theta"), "partial_rotary_factor": (None, "partial_rotary_factor"),
              "rope_local_base_freq": ("sliding_attention", "rope_theta")}


def apply_hf_overrides(config: Any, overrides: dict[str, Any] | None) -> None:
    """vLLM's --hf-overrides: each key set on the config; a JSON object merges into an attribute
    that is itself a config or a dict (e.g. rope_scaling), key by key. RoPE keys also reach
    ``rope_parameters`` where the config keeps them there (transformers 5), which the models
    read. A key the config did not have is set too (custom code may read it) and logged."""
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"hf_overrides must be a JSON object (a dict), got {type(overrides).__name__}")
    for key, value in (overrides or {}).items():
        current = getattr(config, key, None)
        if current is None and key not in _ROPE_KEYS and not hasattr(config, key):
            logging.getLogger("pagedlm").warning("hf_overrides sets %r, which the model's config does not have: "
                                                 "it takes effect only where code reads it", key)
        if isinstance(value, dict) and isinstance(current, dict):
            setattr(config, key, {**current, **value})
        elif isinstance(value, dict) and current is not None and hasattr(current, "to_dict"):
            apply_hf_overrides(current, value)
        else:
            setattr(config, key, value)
    _sync_rope_parameters(config, overrides or {})


def _sync_rope_parameters(config: Any, overrides: dict[str, Any]) -> None:
    params = getattr(config, "rope_parameters", None)
    if not isinstance(params, dict) or not params:
        return
    per_layer_type = all(isinstance(v, dict) for v in params.values())
    for key, (layer_type, name) in _ROPE_KEYS.items():
        if key not in overrides:
            continue
        if not per_layer_type:
            if layer_type != "sliding_attention":
                params[name] = overrides[key]
            continue
        for kind, kind_params in params.items():
            if layer_type is None or kind == layer_type:
                kind_params[name] = overrides[key]
