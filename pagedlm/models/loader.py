"""Build a model from a ModelConfig and fill its weights (safetensors or dummy)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from pagedlm.config import ConfigError, ModelConfig
from pagedlm.models.adapters import as_pooling_model
from pagedlm.models.registry import resolve_model_class

logger = logging.getLogger(__name__)


def safetensors_files(model_dir: str) -> list[Path]:
    """The checkpoint's weight files: from model.safetensors.index.json when sharded."""
    root = Path(model_dir)
    index = root / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = [root / name for name in sorted(set(weight_map.values()))]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise ConfigError(f"checkpoint index names files that are missing: {missing}")
        return files
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no *.safetensors weights found in {model_dir!r}")
    return files


def iterate_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _init_dummy(model: nn.Module, seed: int) -> None:
    """Random weights of the real shapes: speed depends on shapes, not values."""
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if "norm" in name:
            param.data.fill_(1.0)
        else:
            param.data.uniform_(-0.05, 0.05)


def load_model(model_config: ModelConfig, device: str) -> nn.Module:
    model_cls = resolve_model_class(model_config.architectures)
    if model_config.runner == "pooling" and getattr(model_cls, "supports_generation", True):
        model_cls = as_pooling_model(model_cls)  # pooled hidden states need no LM head
    dtype = model_config.torch_dtype
    prev_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_cls(model_config.hf_config, max_position=model_config.max_model_len)
    finally:
        torch.set_default_dtype(prev_dtype)
    if model_config.load_format == "dummy":
        _init_dummy(model, model_config.seed)
    else:
        loaded = model.load_weights(iterate_safetensors(safetensors_files(model_config.model)))
        expected = {n for n, _ in model.named_parameters()}
        missing = sorted(expected - loaded)
        if missing:
            raise ConfigError(f"checkpoint {model_config.model!r} is missing weights for: {missing[:8]}")
    return model.eval()
