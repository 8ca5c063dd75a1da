"""LoRARequest: which adapter a request runs with (vLLM's ``vllm.lora.request.LoRARequest``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoRARequest:
    """``LoRARequest(lora_name, lora_int_id, lora_path)``: ``lora_int_id`` (>= 1) identifies
    the adapter inside the engine (slots, the prefix cache); ``lora_path`` is a PEFT adapter
    directory (adapter_config.json + adapter_model.safetensors)."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""
    base_model_name: str | None = None

    def __post_init__(self) -> None:
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


def wire_id(lora: dict[str, Any] | None) -> int:
    """The adapter id of a wire-form LoRA request (0: the base model)."""
    return int(lora["id"]) if lora else 0
