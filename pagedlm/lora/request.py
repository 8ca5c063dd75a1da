"""LoRARequest: which adapter a request runs with (vLLM's ``vllm.lora.request.LoRARequest``)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Any


@dataclass(frozen=True, eq=False)
class LoRARequest:
    """``LoRARequest(lora_name, lora_int_id, lora_path)``: ``lora_int_id`` (>= 1) identifies
    the adapter inside the engine (slots, the prefix cache); ``lora_path`` is a PEFT adapter
    directory (adapter_config.json + adapter_model.safetensors). vLLM's signature: the
    deprecated ``lora_local_path`` stands in for an empty ``lora_path``; ``long_lora_max_len``
    (long-context LoRA, gone from vLLM's V1 engine), ``tensorizer_config_dict``,
    ``load_inplace=True`` and ``is_3d_lora_weight=True`` are refused. Equal, and hashed, by name."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None  # positions as in vLLM's LoRARequest
    tensorizer_config_dict: dict | None = None
    load_inplace: bool = False
    is_3d_lora_weight: bool = False
    _: KW_ONLY
    lora_local_path: str | None = None
    long_lora_max_len: int | None = None

    def __eq__(self, other: object) -> bool:  # as vLLM's: one adapter per name
        return isinstance(other, LoRARequest) and self.lora_name == other.lora_name

    def __hash__(self) -> int:
        return hash(self.lora_name)

    def __post_init__(self) -> None:
        if not self.lora_path and self.lora_local_path:
            object.__setattr__(self, "lora_path", self.lora_local_path)
        if self.long_lora_max_len is not None:
            raise ValueError("long_lora_max_len (long-context LoRA) is not supported")
        refused = {"tensorizer_config_dict": (self.tensorizer_config_dict is not None,
                                              "adapters are read from PEFT safetensors directories only"),
                   "load_inplace": (self.load_inplace, "an id stands for one set of weights for the life of the "
                                                       "engine: give the new weights a new lora_int_id"),
                   "is_3d_lora_weight": (self.is_3d_lora_weight, "MoE (3D) LoRA weights are not supported")}
        for name, (given, why) in refused.items():
            if given:
                raise ValueError(f"LoRARequest {name} is not supported ({why})")
        if not isinstance(self.lora_int_id, int) or isinstance(self.lora_int_id, bool) or self.lora_int_id < 1:
            raise ValueError(f"lora_int_id must be an integer >= 1, got {self.lora_int_id!r}")
        if not self.lora_name:
            raise ValueError("lora_name must be a non-empty string")
        if not self.lora_path:
            raise ValueError(f"LoRA adapter {self.lora_name!r}: lora_path (a PEFT adapter directory) is required")

    # vLLM's aliases
    @property
    def adapter_id(self) -> int:
        return self.lora_int_id

    @property
    def name(self) -> str:
        return self.lora_name

    @property
    def path(self) -> str:
        return self.lora_path

    def to_wire(self) -> dict[str, Any]:
        """The plain form that travels in EngineCoreRequest / NewRequestData."""
        return {"name": self.lora_name, "id": self.lora_int_id, "path": self.lora_path}

    @classmethod
    def from_wire(cls, lora: dict[str, Any] | None) -> "LoRARequest | None":
        """The request back from ``to_wire``'s form (None: the base model)."""
        return cls(lora["name"], lora["id"], lora["path"]) if lora else None


def wire_id(lora: dict[str, Any] | None) -> int:
    """The adapter id of a wire-form LoRA request (0: the base model)."""
    return int(lora["id"]) if lora else 0
