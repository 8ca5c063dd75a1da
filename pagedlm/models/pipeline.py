"""Pipeline-parallel helpers for model files: which layers this stage holds, placeholders
for the rest, and the tensors that travel between stages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from pagedlm.worker.distributed import get_pipeline_model_parallel_world_size, pp_layer_range


class PPMissingLayer(nn.Identity):
    """Stands in for a module another pipeline stage holds; has no parameters, so its
    checkpoint tensors are skipped (see ``is_pp_missing``)."""


@dataclass
class IntermediateTensors:
    """What a non-last stage hands to the next one."""

    hidden_states: torch.Tensor  # [T, H]
    residual: torch.Tensor  # [T, H]


def make_layers(num_layers: int, build: Callable[[int], nn.Module]) -> tuple[int, int, nn.ModuleList]:
    """(start, end, layers): this stage's layers built, the others placeholders, so module
    names (model.layers.{i}) match the checkpoint on every stage."""
    pp_size = get_pipeline_model_parallel_world_size()
    if num_layers < pp_size:
        from pagedlm.config import ConfigError

        raise ConfigError(f"pipeline_parallel_size ({pp_size}) exceeds the model's {num_layers} layers")
    start, end = pp_layer_range(num_layers)
    layers = nn.ModuleList(build(i) if start <= i < end else PPMissingLayer() for i in range(num_layers))
    return start, end, layers


def missing_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, PPMissingLayer))


def is_pp_missing(name: str, prefixes: tuple[str, ...]) -> bool:
    """True when checkpoint tensor ``name`` belongs to a module another stage holds."""
    return bool(prefixes) and name.startswith(prefixes)
