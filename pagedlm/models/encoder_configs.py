"""Configs of encoder checkpoints whose published config.json is written for remote code,
read into transformers' own classes without running that code.

- nomic-embed-text (``model_type: nomic_bert`` with GPT-2-style keys ``n_embd``, ``n_head``,
  ``n_layer``, ``n_inner``, ``rotary_emb_base`` ...): transformers' NomicBertConfig has the
  same model type but reads only the BERT-style keys, so the published keys are mapped onto
  them. The context is ``max_trained_positions`` (vLLM's default for these models).
- gte-*-v1.5 / gte-multilingual (``model_type: new``, ``NewModel``): read as transformers'
  GteConfig (the same keys).

Settings these encoders do not implement (pre-norm nomic, partial or interleaved rotary,
RoPE scaling, gte's logn attention scaling, RMSNorm) are refused with a ConfigError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pagedlm.config import ConfigError

_NOMIC_KEYS = {"n_embd": "hidden_size", "n_head": "num_attention_heads", "n_layer": "num_hidden_layers",
               "n_inner": "intermediate_size", "layer_norm_epsilon": "layer_norm_eps"}


def _refuse(name: str, what: str, value: Any) -> None:
    raise ConfigError(f"{name}: {what}={value!r} is not supported")


def _nomic_config(raw: dict[str, Any]) -> Any:
    from transformers import NomicBertConfig

    name = "nomic_bert config"
    checks = [("prenorm", False), ("rotary_emb_fraction", 1.0), ("rotary_emb_interleaved", False),
              ("rotary_scaling_factor", None), ("use_rms_norm", False), ("parallel_block", False),
              ("causal", False)]
    for key, ok in checks:
        if key in raw and raw[key] != ok and not (ok is False and raw[key] is None):
            _refuse(name, key, raw[key])
    act = raw.get("activation_function", "swiglu")
    if act not in ("swiglu", "silu"):
        _refuse(name, "activation_function", act)
    cfg = {k: v for k, v in raw.items() if k not in _NOMIC_KEYS and k not in ("model_type", "transformers_version")}
    for old, new in _NOMIC_KEYS.items():
        if old in raw:
            cfg[new] = raw[old]
    cfg["intermediate_size"] = raw.get("n_inner") or 4 * cfg["hidden_size"]
    cfg["hidden_act"] = "silu"
    cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    cfg["max_position_embeddings"] = int(raw.get("max_trained_positions") or raw.get("n_positions") or 2048)
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": float(raw.get("rotary_emb_base", 10000.0))}
    for key in ("auto_map", "activation_function", "rotary_emb_base", "n_positions"):
        cfg.pop(key, None)
    return NomicBertConfig(**cfg)


def _gte_config(raw: dict[str, Any]) -> Any:
    from transformers import GteConfig

    name = "gte (NewModel) config"
    for key, ok in (("position_embedding_type", "rope"), ("layer_norm_type", "layer_norm"),
                    ("logn_attention_scale", False), ("logn_attention_clip1", False), ("rope_scaling", None)):
        if raw.get(key, ok) != ok:
            _refuse(name, key, raw[key])
    cfg = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "auto_map",
                                                      "rope_theta", "rope_scaling")}
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": float(raw.get("rope_theta", 10000.0))}
    return GteConfig(**cfg)


def published_encoder_config(model_dir: str) -> Any | None:
    """The transformers config for a nomic / gte checkpoint's published config.json; None for
    any other checkpoint (transformers' AutoConfig reads those)."""
    path = Path(model_dir) / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    if raw.get("model_type") == "nomic_bert" and "n_embd" in raw:
        return _nomic_config(raw)
    if raw.get("model_type") == "new":
        return _gte_config(raw)
    return None
