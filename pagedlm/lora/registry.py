"""The frontend side of multi-LoRA.

``LoRAValidator`` checks each LoRARequest once (the adapter directory against the base
model) before it reaches the engine core, so a bad adapter is the user's error, never a
failure inside a step. ``LoRAModules`` is the server's table of served adapters: the names
clients put in ``model`` (from --lora-modules and runtime loads) -> LoRARequest.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from pagedlm.lora.config import LoRAConfig
from pagedlm.lora.peft import LoRAAdapterError, validate_adapter
from pagedlm.lora.request import LoRARequest

RUNTIME_UPDATING_ENV_VARS = ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "PAGEDLM_ALLOW_RUNTIME_LORA_UPDATING")


class LoRAValidator:
    def __init__(self, config: LoRAConfig | None, hf_config: Any) -> None:
        self.config = config
        self.hf_config = hf_config
        self._paths: dict[int, str] = {}  # adapter id -> the path it was validated with

    def check(self, lora_request: Any) -> dict[str, Any] | None:
        """The wire form of a valid request's adapter (None: the base model); raises
        LoRAAdapterError (a ValueError) otherwise."""
        if lora_request is None:
            return None
        if self.config is None:
            raise LoRAAdapterError("lora_request needs an engine started with --enable-lora "
                                   "(LLM(enable_lora=True))")
        if not isinstance(lora_request, LoRARequest):
            raise LoRAAdapterError(f"lora_request must be a LoRARequest, got {type(lora_request).__name__}")
        known = self._paths.get(lora_request.lora_int_id)
        if known is None:
            validate_adapter(lora_request.lora_path, self.config.max_lora_rank, self.hf_config)
            self._paths[lora_request.lora_int_id] = lora_request.lora_path
        elif known != lora_request.lora_path:
            raise LoRAAdapterError(f"lora_int_id {lora_request.lora_int_id} is already used by the adapter at "
                                   f"{known!r}; give the adapter at {lora_request.lora_path!r} another id")
        return lora_request.to_wire()


def parse_lora_module(text: str) -> LoRARequest:
    """``name=path`` or the JSON form ``{"name": ..., "path": ..., "base_model_name": ...}``
    (the id is assigned by LoRAModules.add)."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as e:
            raise LoRAAdapterError(f"--lora-modules {text!r}: not valid JSON: {e}") from e
        if not isinstance(spec, dict) or not spec.get("name") or not spec.get("path"):
            raise LoRAAdapterError(f'--lora-modules {text!r}: the JSON form needs "name" and "path"')
        unknown = sorted(set(spec) - {"name", "path", "base_model_name"})
        if unknown:
            raise LoRAAdapterError(f"--lora-modules {text!r}: unknown keys {unknown}")
        return LoRARequest(spec["name"], 1, spec["path"], base_model_name=spec.get("base_model_name"))
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise LoRAAdapterError(f"--lora-modules {text!r}: expected name=path or a JSON object")
    return LoRARequest(name, 1, path)


class LoRAModules:
    """The adapters a server serves, by the name clients use in ``model``. Ids are never
    reused, so a name unloaded and loaded again from another path cannot hit stale cache."""

    def __init__(self, validator: LoRAValidator, base_model_names: list[str]) -> None:
        self.validator = validator
        self.base_model_names = base_model_names
        self.by_name: dict[str, LoRARequest] = {}
        self._ids = itertools.count(1)

    def add(self, name: str, path: str, base_model_name: str | None = None) -> LoRARequest:
        if self.validator.config is None:
            raise LoRAAdapterError("LoRA adapters need the server started with --enable-lora")
        if name in self.by_name or name in self.base_model_names:
            raise LoRAAdapterError(f"The lora adapter '{name}' has already been loaded. If you want to load the "
                                   "adapter in place, set 'load_inplace' to True.")
        request = LoRARequest(name, next(self._ids), path, base_model_name=base_model_name)
        self.validator.check(request)
        self.by_name[name] = request
        return request

    def remove(self, name: str) -> None:
        if self.by_name.pop(name, None) is None:
            raise KeyError(name)

    def get(self, name: str | None) -> LoRARequest | None:
        return self.by_name.get(name) if name else None
