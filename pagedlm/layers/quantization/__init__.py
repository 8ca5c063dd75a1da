"""Weight quantization formats, one ``QuantizationConfig`` each (the seam is documented in
``base.py``), and the one place a checkpoint's ``quantization_config`` and ``--quantization``
become a config.

Formats register themselves with ``@register_quantization_config``; the modules that define
them are imported by ``_load_builtin_formats`` (add yours there).
"""

from __future__ import annotations

import importlib
from typing import Any

from pagedlm.layers.quantization.base import (
    QuantizationConfig,
    QuantizationError,
    QuantMethod,
    is_layer_skipped,
    new_param,
    set_weight_attrs,
)

__all__ = [
    "QUANTIZATION_METHODS", "QuantizationConfig", "QuantizationError", "QuantMethod", "get_quantization_config",
    "is_layer_skipped", "new_param", "register_quantization_config", "resolve_quantization", "resolve_quantization_name",
    "set_weight_attrs",
]

# name (``--quantization`` value) -> config class
QUANTIZATION_METHODS: dict[str, type[QuantizationConfig]] = {}

# Modules defining formats; each registers its configs when imported. A module another branch
# has not merged yet is simply absent.
_BUILTIN_FORMAT_MODULES: tuple[str, ...] = (
    "pagedlm.layers.quantization.fp8",
    "pagedlm.layers.quantization.compressed_tensors",
    "pagedlm.layers.quantization.awq",
    "pagedlm.layers.quantization.gptq",
    "pagedlm.layers.quantization.mxfp4",
    "pagedlm.layers.quantization.bitsandbytes",
    "pagedlm.layers.quantization.fbgemm_fp8",
    "pagedlm.layers.quantization.modelopt",
    "pagedlm.layers.quantization.int8",
    "pagedlm.layers.quantization.quark",
)
_loaded = False


def register_quantization_config(cls: type[QuantizationConfig]) -> type[QuantizationConfig]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    QUANTIZATION_METHODS[cls.name] = cls
    return cls


def _load_builtin_formats() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_FORMAT_MODULES:
        importlib.import_module(module)


def get_quantization_config(name: str) -> type[QuantizationConfig]:
    _load_builtin_formats()
    if name not in QUANTIZATION_METHODS:
        raise QuantizationError(f"unknown quantization {name!r}; supported: {sorted(QUANTIZATION_METHODS)}")
    return QUANTIZATION_METHODS[name]


def _checkpoint_quant_config(hf_config: Any) -> dict[str, Any] | None:
    cfg = getattr(hf_config, "quantization_config", None)
    if cfg is None:
        return None
    if not isinstance(cfg, dict):  # transformers may hand back its own config object
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(vars(cfg))
    return dict(cfg)


def _config_for_checkpoint_method(quant_method: str) -> type[QuantizationConfig]:
    _load_builtin_formats()
    for cls in QUANTIZATION_METHODS.values():
        if quant_method in cls.checkpoint_method_names():
            return cls
    known = sorted({m for c in QUANTIZATION_METHODS.values() for m in c.checkpoint_method_names()})
    raise QuantizationError(f"the checkpoint's quantization_config has quant_method {quant_method!r}, which "
                            f"pagedlm cannot run; supported: {known}")


# vLLM's names for a format run by another of its kernels (Marlin): the same checkpoint format,
# which pagedlm runs with its own kernels.
KERNEL_ALIASES = {"awq_marlin": "awq", "gptq_marlin": "gptq"}
# vLLM's online methods that pagedlm's online fp8 is: ptpc_fp8 (per-channel weights, per-token
# dynamic activations), for a float checkpoint only.
ONLINE_ALIASES = {"ptpc_fp8": "fp8"}
# vLLM's name for its MoE kernel over AWQ / GPTQ checkpoints: the checkpoint's own format here
# (attention quantized, routed experts dequantized while loading).
CHECKPOINT_ALIASES = {"moe_wna16": ("awq", "gptq")}


def resolve_quantization(hf_config: Any, requested: str | None) -> QuantizationConfig | None:
    """The model's quantization: the checkpoint's ``quantization_config`` and ``--quantization``.

    A checkpoint format runs when ``requested`` is None or names it (or a vLLM kernel alias of
    it, ``KERNEL_ALIASES``); a different name is an error unless that config says it can
    override the format. An unquantized checkpoint takes an online method (``--quantization
    fp8``) with an empty config."""
    requested = KERNEL_ALIASES.get(requested, requested) if requested is not None else None
    hf_quant = _checkpoint_quant_config(hf_config)
    if requested in CHECKPOINT_ALIASES:
        method = str((hf_quant or {}).get("quant_method", "")).lower()
        if method not in CHECKPOINT_ALIASES[requested]:
            raise QuantizationError(f"--quantization {requested} runs {' / '.join(CHECKPOINT_ALIASES[requested])} "
                                    f"checkpoints; this one is {method or 'unquantized'}")
        requested = method
    if requested in ONLINE_ALIASES:
        if hf_quant is not None:
            raise QuantizationError(f"--quantization {requested} quantizes a float checkpoint while loading; this "
                                    f"checkpoint is already quantized ({hf_quant.get('quant_method')!r})")
        requested = ONLINE_ALIASES[requested]
    if hf_quant is None:
        if requested is None:
            return None
        return get_quantization_config(requested).from_config({})
    quant_method = str(hf_quant.get("quant_method", "")).lower()
    if not quant_method:
        raise QuantizationError("the checkpoint's quantization_config has no quant_method")
    cls = _config_for_checkpoint_method(quant_method)
    if requested is not None and requested != cls.name:
        override = get_quantization_config(requested)
        if not override.override_checkpoint(hf_quant):
            raise QuantizationError(f"--quantization {requested} does not match the checkpoint, which is quantized "
                                    f"with {quant_method!r}; drop --quantization or pass --quantization {cls.name}")
        cls = override
    return cls.from_config(hf_quant)


def resolve_quantization_name(hf_config: Any, requested: str | None, model_impl: str = "auto",
                              model: str | None = None) -> str | None:
    """Check the checkpoint and ``--quantization`` at config time; the name the workers build.
    ``gguf`` names how a .gguf ``model`` file is stored (its tensors are dequantized while
    loading): it asks for nothing more there and is refused for anything else."""
    if requested == "gguf":
        from pagedlm.models.loader.gguf import is_gguf_file

        if model is None or not is_gguf_file(model):
            raise QuantizationError(f"--quantization gguf needs a .gguf model file; {model!r} is not one")
        requested = None
    quant_config = resolve_quantization(hf_config, requested)
    if quant_config is None:
        return None
    from pagedlm.layers.quantization.loading import verify_model_supports
    from pagedlm.models.registry import resolve_model_class

    verify_model_supports(resolve_model_class(list(getattr(hf_config, "architectures", None) or []), model_impl),
                          quant_config)
    return quant_config.name
