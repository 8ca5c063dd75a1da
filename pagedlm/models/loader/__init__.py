"""Build a model from a ModelConfig and fill its weights.

Weight sources, each a module of this package: safetensors (default), PyTorch ``.bin``
(``load_format="pt"``, or "auto" when a directory has no safetensors), GGUF (a ``.gguf``
file), or random values of the real shapes (``load_format="dummy"``). Where the files come
from (local path or Hub) is resolved before this, in ``source.py``.
"""

from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch import nn

from pagedlm.config import ConfigError, ModelConfig
from pagedlm.layers.quantization import resolve_quantization
from pagedlm.layers.quantization.loading import (
    drop_format_tensors,
    init_dummy_quantized,
    process_weights_after_loading,
    verify_model_supports,
)
from pagedlm.models.loader.kv_scales import take_kv_scales
from pagedlm.models.loader.safetensors import iterate_safetensors, safetensors_files
from pagedlm.models.adapters import as_pooling_model
from pagedlm.models.registry import resolve_model_class

__all__ = ["load_model", "reload_weights", "iterate_weights", "iterate_safetensors", "safetensors_files"]

logger = logging.getLogger(__name__)


def _init_dummy(model: nn.Module, seed: int) -> None:
    """Random weights of the real shapes: speed depends on shapes, not values. Quantized
    layers get valid codes and scales from their QuantMethod."""
    quantized = init_dummy_quantized(model, seed)
    torch.manual_seed(seed)
    for name, param in model.named_parameters():
        if id(param) in quantized:
            continue
        if "norm" in name:
            param.data.fill_(1.0)
        else:
            param.data.uniform_(-0.05, 0.05)


def iterate_weights(model_config: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF parameter name, tensor) pairs of the checkpoint, in the format load_format picks."""
    from pagedlm.models.loader.bin import bin_files, has_bin, iterate_bin
    from pagedlm.models.loader.gguf import is_gguf_file, iterate_gguf
    from pagedlm.models.loader.safetensors import has_safetensors

    path, load_format = model_config.model, model_config.load_format
    if is_gguf_file(path):
        return iterate_gguf(path, model_config.hf_config, model_config.torch_dtype)
    if load_format == "pt" or (load_format == "auto" and not has_safetensors(path) and has_bin(path)):
        return iterate_bin(bin_files(path))
    return iterate_safetensors(safetensors_files(path))


def load_model(model_config: ModelConfig, device: str) -> nn.Module:
    model_cls = resolve_model_class(model_config.architectures, model_config.model_impl)
    if model_config.runner == "pooling" and getattr(model_cls, "supports_generation", True):
        model_cls = as_pooling_model(model_cls)  # pooled hidden states need no LM head
    quant_config = resolve_quantization(model_config.hf_config, model_config.quantization)
    verify_model_supports(model_cls, quant_config)
    extra = {"quant_config": quant_config} if quant_config is not None else {}
    dtype = model_config.torch_dtype
    prev_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = model_cls(model_config.hf_config, max_position=model_config.max_model_len, **extra)
    finally:
        torch.set_default_dtype(prev_dtype)
    if model_config.load_format == "dummy":
        _init_dummy(model, model_config.seed)
    else:
        # KV cache scales go into the attention layers, not through the model's loader.
        weights = take_kv_scales(model, iterate_weights(model_config))
        loaded = model.load_weights(drop_format_tensors(weights, quant_config))
        expected = {n for n, _ in model.named_parameters()}
        missing = sorted(expected - loaded)
        if missing:
            raise ConfigError(f"checkpoint {model_config.model!r} is missing weights for: {missing[:8]}")
    process_weights_after_loading(model)
    model = model.eval()
    check_runs = getattr(model, "check_runs", None)  # the transformers backend: its layers all attend
    if check_runs is not None:
        check_runs(device)
    return model


def reload_weights(model: nn.Module, model_config: ModelConfig) -> None:
    """Load the checkpoint again into a model that load_model built (sleep mode: after a
    level-2 sleep the weights are gone; vLLM's ``collective_rpc("reload_weights")``)."""
    if model_config.load_format == "dummy":
        _init_dummy(model, model_config.seed)
        return
    if resolve_quantization(model_config.hf_config, model_config.quantization) is not None:
        # process_weights_after_loading may have reshaped the loaded tensors (transposed,
        # folded scales): loading the checkpoint into them again would not reproduce them.
        raise NotImplementedError("reload_weights supports unquantized checkpoints only")
    with torch.no_grad():
        model.load_weights(take_kv_scales(model, iterate_weights(model_config)))
