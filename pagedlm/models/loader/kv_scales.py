"""Per-layer KV cache scales from the checkpoint, loaded into the attention layers.

An fp8 KV cache stores ``fp8(k / k_scale)`` and ``fp8(v / v_scale)`` (one float32 scale per
layer for K and one for V). Checkpoints calibrated for it carry the scales under these names
(``P`` = the attention module, e.g. ``model.layers.3.self_attn``):

  ``P.k_scale``, ``P.v_scale``                   HF ``quant_method: fp8`` / vLLM (also ``P.attn.k_scale``)
  ``P.k_proj.output_scale``, ``P.v_proj.output_scale``   compressed-tensors ``kv_cache_scheme``
  ``P.k_proj.k_scale``, ``P.v_proj.v_scale``     ModelOpt
  ``P.kv_scale``                                 AutoFP8 (one scale for both)

Every such tensor is taken out of the weight stream before the model's ``load_weights`` sees
it and copied into the layer's ``k_scale`` / ``v_scale`` buffers; layers without one keep
1.0. Only an fp8 cache reads them (``--kv-cache-dtype fp8``); with ``auto`` they are loaded
and unused, as in vLLM. Query / softmax scales of fp8 *attention* (``P.q_scale``,
``P.prob_scale``, ``P.q_proj.output_scale``) have no use here: queries stay in the model
dtype; they are dropped with one log line.
"""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

import torch
from torch import nn

from pagedlm.config import ConfigError
from pagedlm.layers.attention import Attention
from pagedlm.models.pipeline import is_pp_missing, missing_prefixes

logger = logging.getLogger(__name__)

# name suffix -> the scales it sets; longer suffixes first (".k_proj.k_scale" before ".k_scale").
_SCALE_SUFFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (".k_proj.output_scale", ("k_scale",)),
    (".v_proj.output_scale", ("v_scale",)),
    (".k_proj.k_scale", ("k_scale",)),
    (".v_proj.v_scale", ("v_scale",)),
    (".kv_scale", ("k_scale", "v_scale")),
    (".k_scale", ("k_scale",)),
    (".v_scale", ("v_scale",)),
)
_UNUSED_SUFFIXES = (".q_scale", ".prob_scale", ".q_proj.output_scale")


def _match(name: str) -> tuple[str, tuple[str, ...]] | None:
    """(attention module prefix, scale names) of a KV scale tensor; None for other tensors."""
    for suffix, targets in _SCALE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)], targets
    return None


def _attention_at(model: nn.Module, prefix: str) -> Attention | None:
    """The paged Attention layer at ``prefix`` or directly below it (``self_attn.attn``)."""
    try:
        module = model.get_submodule(prefix)
    except AttributeError:
        return None
    if isinstance(module, Attention):
        return module
    found = [m for m in module.children() if isinstance(m, Attention)]
    return found[0] if len(found) == 1 else None


def _scale_value(name: str, tensor: torch.Tensor) -> float:
    if tensor.numel() != 1:
        raise ConfigError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}: only per-tensor KV cache "
                          "scales (one value per layer) are supported")
    value = float(tensor.float().reshape(()))
    if not (value > 0.0 and value < float("inf")):
        raise ConfigError(f"checkpoint tensor {name!r} = {value}: a KV cache scale must be positive and finite")
    return value


def take_kv_scales(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass every tensor through except KV cache scales, which go into the attention layers
    (or are dropped when another pipeline stage holds the layer)."""
    skipped = missing_prefixes(model)
    num_loaded, num_unused = 0, 0
    for name, tensor in weights:
        if name.endswith(_UNUSED_SUFFIXES):
            num_unused += 1
            continue
        match = _match(name)
        if match is None:
            yield name, tensor
            continue
        prefix, targets = match
        attn = _attention_at(model, prefix)
        if attn is None:
            if is_pp_missing(name, skipped):
                continue
            yield name, tensor  # not a KV scale after all: the model's loader decides
            continue
        value = _scale_value(name, tensor)
        for target in targets:
            getattr(attn, target).fill_(value)
        num_loaded += 1
    if num_loaded:
        logger.info("Loaded %d KV cache scale tensors from the checkpoint (used by an fp8 KV cache)", num_loaded)
    if num_unused:
        logger.info("Dropped %d fp8-attention query/softmax scales: queries stay in the model dtype", num_unused)
