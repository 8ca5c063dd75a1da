"""LoRA adapters on the server: --lora-modules, adapters in /v1/models, a request's ``model``
naming its adapter, and vLLM's runtime /v1/load_lora_adapter and /v1/unload_lora_adapter
(off unless VLLM_ALLOW_RUNTIME_LORA_UPDATING or PAGEDLM_ALLOW_RUNTIME_LORA_UPDATING is set)."""

from __future__ import annotations

import os
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict

from pagedlm.config import ConfigError, EngineConfig
from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.lora.peft import LoRAAdapterNotFoundError
from pagedlm.lora.registry import RUNTIME_UPDATING_ENV_VARS, LoRAModules, LoRAValidator, parse_lora_module
from pagedlm.lora.request import LoRARequest


class LoadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str | None = None
    lora_path: str | None = None
    load_inplace: bool = False  # replace an adapter of the same name


class UnloadLoRAAdapterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str | None = None
    lora_int_id: int | None = None


def build_lora_modules(specs: list[str] | None, config: EngineConfig, base_names: list[str]) -> LoRAModules:
    """The served adapters from --lora-modules, each checked against the base model now, so a
    bad one stops the server at start-up (ConfigError) rather than failing requests."""
    modules = LoRAModules(LoRAValidator(config.lora_config, config.model_config.hf_config), base_names)
    if specs and config.lora_config is None:
        raise ConfigError("--lora-modules needs --enable-lora")
    for text in specs or []:
        try:
            spec = parse_lora_module(text)
            modules.add(spec.lora_name, spec.lora_path, spec.base_model_name)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return modules


def runtime_updating_allowed() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true") for v in RUNTIME_UPDATING_ENV_VARS)


def adapter_cards(modules: LoRAModules, base_name: str, card: Callable[[str], dict[str, Any]]) -> list[dict]:
    """/v1/models entries of the adapters: ``parent`` is the base model, ``root`` the adapter
    path. As vLLM's, a ``base_model_name`` that is not a served model is not shown."""
    cards = []
    for name, lora in modules.by_name.items():
        entry = card(name)
        parent = lora.base_model_name if lora.base_model_name in modules.base_model_names else base_name
        entry.update(root=lora.lora_path, parent=parent)
        cards.append(entry)
    return cards


def resolve_lora(modules: LoRAModules | None, model: str | None) -> LoRARequest | None:
    return modules.get(model) if modules is not None else None


def add_lora_routes(app: FastAPI, modules: LoRAModules,
                    read_body: Callable[[Request, type], Awaitable[Any]]) -> None:
    def check_allowed() -> None:
        if not runtime_updating_allowed():
            raise OpenAIError("Runtime LoRA loading is off: start the server with "
                              "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True (or PAGEDLM_ALLOW_RUNTIME_LORA_UPDATING=True).",
                              404)

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> Response:
        check_allowed()
        body = await read_body(request, LoadLoRAAdapterRequest)
        if not body.lora_name or not body.lora_path:
            raise OpenAIError("Both 'lora_name' and 'lora_path' must be provided.", 400)
        previous = modules.by_name.get(body.lora_name) if body.load_inplace else None
        if previous is not None:
            modules.remove(body.lora_name)
        try:
            modules.add(body.lora_name, body.lora_path)
        except ValueError as e:  # LoRAAdapterError: a bad path, config or shapes
            if previous is not None:
                modules.by_name[previous.lora_name] = previous
            if isinstance(e, LoRAAdapterNotFoundError):  # vLLM's LoRAAdapterNotFoundError: a 404
                raise OpenAIError(f"Loading lora {body.lora_name} failed: No adapter found for {body.lora_path} "
                                  f"({e})", 404, "lora_path") from e
            raise OpenAIError(str(e), 400, "lora_path") from e
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> Response:
        check_allowed()
        body = await read_body(request, UnloadLoRAAdapterRequest)
        name = body.lora_name
        if body.lora_int_id is not None:  # vLLM's other handle on an adapter: it must name the same one
            by_id = next((n for n, lora in modules.by_name.items() if lora.lora_int_id == body.lora_int_id), None)
            if by_id is None:
                raise OpenAIError(f"No LoRA adapter has lora_int_id {body.lora_int_id}.", 404, "lora_int_id")
            if name and name != by_id:
                raise OpenAIError(f"lora_int_id {body.lora_int_id} is the adapter '{by_id}', not '{name}'.", 400,
                                  "lora_int_id")
            name = by_id
        if not name:
            raise OpenAIError("'lora_name' needs to be provided to unload a LoRA adapter.", 400)
        try:
            modules.remove(name)
        except KeyError:
            raise OpenAIError(f"The lora adapter '{name}' cannot be found.", 404, "lora_name") from None
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")


__all__ = ["add_lora_routes", "adapter_cards", "build_lora_modules", "resolve_lora"]
