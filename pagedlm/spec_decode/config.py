"""--speculative-config: vLLM's JSON keys, parsed and checked in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagedlm.config import ConfigError

METHODS = ("ngram", "draft_model", "eagle", "eagle3")
# vLLM keys that pagedlm does not build; refused by name rather than accepted and ignored.
_REFUSED_KEYS = {
    "disable_by_batch_size": "disabling speculation above a batch size",
    "speculative_token_tree": "tree drafting",
    "quantization": "a quantized draft model",
    "draft_pipeline_parallel_size": "a pipeline-parallel draft",
    "disable_padded_drafter_batch": "an unpadded drafter batch",
    "prompt_lookup_min_len": "prompt_lookup_min_len (use prompt_lookup_min)",
}
_KNOWN_KEYS = {"method", "model", "num_speculative_tokens", "prompt_lookup_min", "prompt_lookup_max",
               "draft_tensor_parallel_size", "max_model_len", "revision"}


@dataclass(frozen=True)
class SpeculativeConfig:
    method: str
    num_speculative_tokens: int
    model: str | None = None  # draft checkpoint (draft_model, eagle, eagle3)
    prompt_lookup_min: int = 1
    prompt_lookup_max: int = 4
    draft_tensor_parallel_size: int = 1

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
        if d.get("model") == "[ngram]":  # vLLM's old spelling of the n-gram proposer
            d = {**{k: v for k, v in d.items() if k != "model"}, "method": d.get("method") or "ngram"}
        method = d.get("method") or _infer_method(d.get("model"))
        if method not in METHODS:
            raise ConfigError(f"speculative_config: method must be one of {list(METHODS)}, got {method!r}")
        k = d.get("num_speculative_tokens")
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 16:
            raise ConfigError(f"speculative_config: num_speculative_tokens must be an integer in [1, 16], got {k!r}")
        lo, hi = d.get("prompt_lookup_min", 1), d.get("prompt_lookup_max", 4)
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
                   prompt_lookup_max=hi)


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


def check_speculation_fits(world_size: int, async_scheduling: bool | None) -> None:
    """What speculation does not combine with yet, refused in one line each."""
    if world_size > 1:
        raise ConfigError("speculative_config: speculative decoding runs on one device; "
                          "drop --tensor-parallel-size / --pipeline-parallel-size")
    if async_scheduling:
        raise ConfigError("speculative_config: a verify step needs the last step's accepted tokens before it "
                          "is scheduled; drop --async-scheduling (speculation steps synchronously)")
