"""--speculative-config: vLLM's JSON keys, parsed and checked in one place."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pagedlm.config import ConfigError

logger = logging.getLogger(__name__)

METHODS = ("ngram", "draft_model", "eagle", "eagle3")
# vLLM keys that pagedlm does not build; refused by name rather than accepted and ignored.
_REFUSED_KEYS = {
    "speculative_token_tree": "tree drafting",
    "quantization": "a quantized draft model",
    "draft_pipeline_parallel_size": "a pipeline-parallel draft",
    "disable_padded_drafter_batch": "an unpadded drafter batch",
    "prompt_lookup_min_len": "prompt_lookup_min_len (use prompt_lookup_min)",
}
# vLLM keys whose only value pagedlm builds is their default: that value is taken, others refused.
_DEFAULT_ONLY_KEYS = {"rejection_sample_method": "standard", "acceptance_method": "rejection_sampler"}
_KNOWN_KEYS = {"method", "model", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max",
               "draft_tensor_parallel_size", "max_model_len", "revision", "disable_by_batch_size",
               *_DEFAULT_ONLY_KEYS}
# A step of many requests is compute-bound: verifying (1 + k) tokens for each costs about
# (1 + k) times a decode, more than the accepted drafts win back. The default pauses
# speculation once the verify tokens of the running requests would pass this many.
_AUTO_PAUSE_TOKENS = 128


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str
    num_speculative_tokens: int
    model: str | None = None  # draft checkpoint (draft_model, eagle, eagle3)
    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 4
    draft_tensor_parallel_size: int = 1
    # A step with at least this many running requests runs without drafts (None: never).
    disable_by_batch_size: int | None = None

    @property
    def num_lookahead_tokens(self) -> int:
        """KV slots past the verified tokens that the proposer writes while drafting (a draft
        model or EAGLE head runs k chained steps; the n-gram lookup writes nothing)."""
        return 0 if self.method == "ngram" else self.num_speculative_tokens

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SpeculativeConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"speculative_config must be a JSON object, got {type(d).__name__}")
        for key in d:
            if key in _REFUSED_KEYS:
                raise ConfigError(f"speculative_config: {key!r} is not supported ({_REFUSED_KEYS[key]})")
            if key not in _KNOWN_KEYS:
                raise ConfigError(f"speculative_config: unknown key {key!r}; known keys: {sorted(_KNOWN_KEYS)}")
        for key, only in _DEFAULT_ONLY_KEYS.items():
            if d.get(key, only) not in (only, None):
                raise ConfigError(f"speculative_config: {key} {d[key]!r} is not supported; "
                                  f"pagedlm verifies drafts by standard rejection sampling ({key}: {only!r})")
        if d.get("model") in ("ngram", "[ngram]"):  # vLLM's other spellings of the n-gram proposer
            d = {**{k: v for k, v in d.items() if k != "model"}, "method": d.get("method") or "ngram"}
        method = d.get("method") or _infer_method(d.get("model"))
        if method not in METHODS:
            raise ConfigError(f"speculative_config: method must be one of {list(METHODS)}, got {method!r}")
        k = d.get("num_speculative_tokens")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 16:
            raise ConfigError(f"speculative_config: num_speculative_tokens must be an integer in [1, 16], got {k!r}")
        lo, hi = d.get("prompt_lookup_min"), d.get("prompt_lookup_max")
        # Left out (or null), a bound takes its default; a lone prompt_lookup_min above the
        # default maximum raises the maximum to it, as vLLM sets the missing bound to the given one.
        lo = 1 if lo is None else lo
        hi = (max(4, lo) if isinstance(lo, int) else 4) if hi is None else hi
        if method == "ngram":
            if d.get("model") is not None:
                raise ConfigError("speculative_config: method 'ngram' takes no model")
            if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
                raise ConfigError(f"speculative_config: need 1 <= prompt_lookup_min <= prompt_lookup_max, "
                                  f"got {lo!r}, {hi!r}")
        else:
            if not d.get("model"):
                raise ConfigError(f"speculative_config: method {method!r} needs a draft 'model' (a checkpoint path)")
            for key in ("prompt_lookup_min", "prompt_lookup_max"):
                if key in d:
                    raise ConfigError(f"speculative_config: {key!r} only applies to method 'ngram'")
        if d.get("draft_tensor_parallel_size", 1) != 1:
            raise ConfigError("speculative_config: draft_tensor_parallel_size must be 1 (the draft runs unsharded)")
        if d.get("revision") is not None:
            raise ConfigError("speculative_config: 'revision' is not supported; pass a local draft checkpoint")
        if d.get("max_model_len") is not None:
            raise ConfigError("speculative_config: 'max_model_len' is not supported; the draft uses the target's")
        return cls(method=method, num_speculative_tokens=k, model=d.get("model"), prompt_lookup_min=lo,
                   prompt_lookup_max=hi, disable_by_batch_size=_disable_by_batch_size(d, k))


def default_disable_by_batch_size(num_speculative_tokens: int) -> int:
    """pagedlm's default when the key is left out (vLLM's is never): the batch size at which
    the running requests' verify tokens reach _AUTO_PAUSE_TOKENS."""
    return max(2, _AUTO_PAUSE_TOKENS // (num_speculative_tokens + 1))


def _disable_by_batch_size(d: dict[str, Any], k: int) -> int | None:
    """The key as given (an integer >= 2, or null for never), else the default, logged once."""
    if "disable_by_batch_size" not in d:
        value = default_disable_by_batch_size(k)
        logger.info("speculative_config: speculation pauses while %d or more requests are running "
                    "(disable_by_batch_size's default for num_speculative_tokens=%d; set it, or null for never)",
                    value, k)
        return value
    value = d["disable_by_batch_size"]
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 2:
        raise ConfigError(f"speculative_config: disable_by_batch_size must be an integer >= 2 or null, got {value!r}")
    return value


def _infer_method(model: str | None) -> str | None:
    """vLLM's inference when 'method' is left out: '[ngram]' or a draft checkpoint."""
    if model is None:
        return None
    lowered = model.lower()
    if "eagle3" in lowered:
        return "eagle3"
    return "eagle" if "eagle" in lowered else "draft_model"


def resolve_speculative_config(raw: dict[str, Any] | str | None, pooling: bool,
                               max_model_len: int) -> SpeculativeConfig | None:
    """The engine's speculative config from the flag/kwarg (a dict, or JSON text)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        import json

        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ConfigError(f"speculative_config is not valid JSON: {e}") from None
    spec = SpeculativeConfig.from_dict(raw)
    if pooling:
        raise ConfigError("speculative_config applies to generation; a pooling model samples no tokens")
    if spec.num_speculative_tokens + 1 >= max_model_len:
        raise ConfigError(f"speculative_config: num_speculative_tokens must be below max_model_len - 1 "
                          f"({max_model_len - 1})")
    return spec


def check_speculation_fits(world_size: int) -> None:
    """What speculation does not combine with yet, refused in one line each."""
    if world_size > 1:
        raise ConfigError("speculative_config: speculative decoding runs on one device; "
                          "drop --tensor-parallel-size / --pipeline-parallel-size")
