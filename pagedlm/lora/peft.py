"""PEFT LoRA adapter directories: ``adapter_config.json`` + ``adapter_model.safetensors``.

``validate_adapter`` runs in the frontend (API process / LLM) before a request or a runtime
load is accepted: it reads the config and the safetensors header (names and shapes, no
tensor data) and checks them against the base model, so a bad adapter is a clear error for
the user and never a failure inside a step. ``load_adapter_weights`` runs in the workers.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from pagedlm.config import attention_shape

# The projections an adapter may target (Hugging Face names of the Llama-style blocks).
SUPPORTED_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_KEY = re.compile(r"^(?:base_model\.model\.)?(model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+))\.lora_([AB])\.weight$")
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"

# adapter_config.json key -> (the value that means "not used", what the feature is)
_UNSUPPORTED_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "use_dora": ((False, None), "DoRA (use_dora)"),
    "modules_to_save": ((None, [], ()), "modules_to_save (fully trained extra modules)"),
    "bias": (("none", None), "trained biases (bias)"),
    "lora_bias": ((False, None), "lora_bias"),
    "fan_in_fan_out": ((False, None), "fan_in_fan_out"),
    "layers_to_transform": ((None, [], ()), "layers_to_transform"),
    "rank_pattern": (({}, None), "per-module ranks (rank_pattern)"),
    "alpha_pattern": (({}, None), "per-module alphas (alpha_pattern)"),
    "layer_replication": ((None,), "layer_replication"),
    "target_parameters": ((None, [], ()), "target_parameters"),
    "use_qalora": ((False, None), "QA-LoRA"),
    "alora_invocation_tokens": ((None,), "activated LoRA (alora_invocation_tokens)"),
    "trainable_token_indices": ((None,), "trainable_token_indices"),
}


class LoRAAdapterError(ValueError):
    """An adapter that cannot be served; the message says what is wrong with it."""


class LoRAAdapterNotFoundError(LoRAAdapterError):
    """The adapter path is not a directory (vLLM answers a runtime load of one with a 404)."""


@dataclass(frozen=True)
class AdapterConfig:
    rank: int
    alpha: float
    scaling: float  # alpha / r, or alpha / sqrt(r) with rsLoRA
    modules: tuple[str, ...]  # Hugging Face module names it changes, e.g. model.layers.0.self_attn.q_proj


def _read_config(path: str, max_rank: int) -> dict[str, Any]:
    if not os.path.isdir(path):
        raise LoRAAdapterNotFoundError(f"LoRA adapter path {path!r} is not a directory")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not os.path.isfile(os.path.join(path, name)):
            extra = " (adapter_model.bin is not supported: save with safe_serialization)" \
                if name == WEIGHTS_FILE and os.path.isfile(os.path.join(path, "adapter_model.bin")) else ""
            raise LoRAAdapterError(f"LoRA adapter {path!r} has no {name}{extra}")
    try:
        with open(os.path.join(path, CONFIG_FILE)) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise LoRAAdapterError(f"LoRA adapter {path!r}: cannot read {CONFIG_FILE}: {e}") from e
    if cfg.get("peft_type", "LORA") != "LORA":
        raise LoRAAdapterError(f"LoRA adapter {path!r}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for key, (unused, what) in _UNSUPPORTED_KEYS.items():
        if key in cfg and cfg[key] not in unused:
            raise LoRAAdapterError(f"LoRA adapter {path!r}: {what} is not supported ({key}={cfg[key]!r})")
    rank = cfg.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise LoRAAdapterError(f"LoRA adapter {path!r}: r must be a positive integer, got {rank!r}")
    if rank > max_rank:
        raise LoRAAdapterError(f"LoRA adapter {path!r} has rank {rank}, more than max_lora_rank={max_rank}; "
                               f"start the engine with --max-lora-rank {rank} or more")
    targets = cfg.get("target_modules")
    if isinstance(targets, (list, tuple)):
        bad = sorted(set(targets) - set(SUPPORTED_MODULES))
        if bad:
            raise LoRAAdapterError(f"LoRA adapter {path!r} targets {bad}; supported modules: {list(SUPPORTED_MODULES)}")
    return cfg


def expected_shapes(hf_config: Any) -> dict[str, tuple[int, int]]:
    """Projection name -> (out, in) of its full (unsharded) weight."""
    num_heads, num_kv_heads, head_dim = attention_shape(hf_config)
    hidden, inter = hf_config.hidden_size, getattr(hf_config, "intermediate_size", 0)
    q, kv = num_heads * head_dim, num_kv_heads * head_dim
    return {"q_proj": (q, hidden), "k_proj": (kv, hidden), "v_proj": (kv, hidden), "o_proj": (hidden, q),
            "gate_proj": (inter, hidden), "up_proj": (inter, hidden), "down_proj": (hidden, inter)}


def validate_adapter(path: str, max_rank: int, hf_config: Any) -> AdapterConfig:
    """Check an adapter directory against the base model; raises LoRAAdapterError."""
    from safetensors import safe_open

    cfg = _read_config(path, max_rank)
    rank = cfg["r"]
    alpha = float(cfg.get("lora_alpha", 8))
    scaling = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    shapes = expected_shapes(hf_config)
    found: dict[str, set[str]] = {}
    try:
        with safe_open(os.path.join(path, WEIGHTS_FILE), "pt") as f:
            for key in f.keys():
                module, which = _check_key(path, key, f.get_slice(key).get_shape(), rank, shapes, hf_config)
                found.setdefault(module, set()).add(which)
    except LoRAAdapterError:
        raise
    except Exception as e:  # a truncated or foreign file
        raise LoRAAdapterError(f"LoRA adapter {path!r}: cannot read {WEIGHTS_FILE}: {e}") from e
    half = sorted(m for m, parts in found.items() if parts != {"A", "B"})
    if half:
        raise LoRAAdapterError(f"LoRA adapter {path!r}: {half[0]} has lora_A or lora_B but not both")
    if not found:
        raise LoRAAdapterError(f"LoRA adapter {path!r} holds no LoRA weights")
    return AdapterConfig(rank, alpha, scaling, tuple(sorted(found)))


def _check_key(path: str, key: str, shape: list[int], rank: int, shapes: dict[str, tuple[int, int]],
               hf_config: Any) -> tuple[str, str]:
    m = _KEY.match(key)
    if m is None:
        raise LoRAAdapterError(f"LoRA adapter {path!r}: tensor {key!r} is not a LoRA weight of a supported "
                               f"module ({', '.join(SUPPORTED_MODULES)})")
    module, layer, proj, which = m.group(1), int(m.group(2)), m.group(3), m.group(4)
    if proj not in shapes:
        raise LoRAAdapterError(f"LoRA adapter {path!r} targets {proj!r}, which this model does not have "
                               f"(supported: {', '.join(SUPPORTED_MODULES)})")
    if layer >= hf_config.num_hidden_layers:
        raise LoRAAdapterError(f"LoRA adapter {path!r}: layer {layer} does not exist (the model has "
                               f"{hf_config.num_hidden_layers})")
    out_dim, in_dim = shapes[proj]
    want = [rank, in_dim] if which == "A" else [out_dim, rank]
    if list(shape) != want:
        raise LoRAAdapterError(f"LoRA adapter {path!r}: {key} has shape {list(shape)}, expected {want} for this "
                               "base model (is it an adapter for another model?)")
    return module, which


@dataclass
class AdapterWeights:
    """One adapter in host memory: module name -> (A [r, in], B [out, r] with the scaling folded in)."""

    rank: int
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]]

    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() + b.numel() * b.element_size() for a, b in self.modules.values())


def load_adapter_weights(path: str, max_rank: int, hf_config: Any) -> AdapterWeights:
    """Read (and validate) an adapter into host memory, float32, scaling folded into B."""
    from safetensors.torch import load_file

    cfg = validate_adapter(path, max_rank, hf_config)
    tensors = load_file(os.path.join(path, WEIGHTS_FILE))
    modules: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _KEY.match(key)
        assert m is not None  # validate_adapter checked every key
        a, b = modules.get(m.group(1), (None, None))
        if m.group(4) == "A":
            a = tensor.float()
        else:
            b = tensor.float() * cfg.scaling
        modules[m.group(1)] = (a, b)  # type: ignore[assignment]
    return AdapterWeights(cfg.rank, modules)
