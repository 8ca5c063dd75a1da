"""The quantization seam: a ``QuantizationConfig`` per checkpoint, a ``QuantMethod`` per linear layer.

How a linear layer is built (pagedlm/layers/linear.py)::

    method = quant_config.get_quant_method(layer, prefix)  # None -> UnquantizedLinearMethod
    method.create_weights(layer, input_size_per_partition, output_partition_sizes,
                          input_size, output_size, params_dtype, weight_loader=layer.weight_loader)
    ... checkpoint tensors are loaded through each parameter's ``weight_loader`` ...
    method.process_weights_after_loading(layer)             # once, after the last tensor
    y = method.apply(layer, x, bias)                        # every forward

Writing a method
----------------
``create_weights`` registers on ``layer`` one ``nn.Parameter`` per checkpoint tensor of the
format, named as in the checkpoint (``weight``, ``weight_scale``, ``input_scale``, ``qweight``,
``qzeros``, ``scales``, ``g_idx``...), so ``model.layers.0.mlp.down_proj.weight_scale`` loads by
name. Shapes are this rank's shard (``input_size_per_partition`` and the per-shard output widths
``output_partition_sizes`` — one entry per fused part: [q, k, v] for qkv_proj, [gate, up] for
gate_up_proj, one entry otherwise), in *logical* (unpacked) units; divide by the pack factor
yourself. Tag every parameter with ``set_weight_attrs(param, {...})``; the layer's weight loader
needs nothing else to shard and place the checkpoint tensor:

- ``weight_loader``: always the ``weight_loader`` argument.
- ``output_dim``: the tensor dimension that indexes output features (column-parallel layers
  split it, fused layers place each part along it). Leave it out when the tensor is the same for
  every output feature (``g_idx``): it is then copied whole.
- ``input_dim``: the dimension that indexes input features (row-parallel layers split it).
  Leave it out when the tensor does not vary along the input (per-channel scales of a
  row-parallel layer): it is then replicated.
- ``packed_dim`` and ``pack_factor``: when ``pack_factor`` logical values share one element along
  ``packed_dim`` (AWQ qweight [in, out/8] int32: packed_dim=1, pack_factor=8; GPTQ qweight
  [in/8, out]: packed_dim=0). Offsets of fused parts along a packed output dim are divided by
  ``pack_factor``; shard sizes are read from the parameter's (already packed) shape.
- ``shard_indexed``: a per-tensor value per fused part (a per-tensor ``weight_scale`` of shape
  ``[len(output_partition_sizes)]``): the checkpoint's scalar of part i (q=0, k=1, v=2; gate=0,
  up=1) is written at index i. ``process_weights_after_loading`` usually folds these into one
  per-channel vector.

A tensor with neither ``output_dim``, ``input_dim`` nor ``shard_indexed`` is copied whole on every
rank. A checkpoint tensor of one element may fill a parameter of shape ``[]`` or ``[1]``.

``process_weights_after_loading`` may replace parameters (transpose for a kernel, fold scales,
quantize online); after it, only ``apply`` reads them. ``init_dummy`` fills valid random values
for ``--load-format dummy`` (quantized codes plus sane scales) and then the loader runs
``process_weights_after_loading`` as after a real checkpoint.

Writing a format
----------------
Subclass ``QuantizationConfig``, set ``name``, implement ``from_config`` (the checkpoint's
``quantization_config`` dict, or ``{}`` for an online method asked for with ``--quantization``)
and ``get_quant_method``, and register it with ``@register_quantization_config`` in a module
that ``pagedlm/layers/quantization/__init__.py`` imports. Refuse what you cannot run (bit width,
group size, scheme) in ``from_config`` with ``QuantizationError``: it reaches the user as one line.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from pagedlm.config import ConfigError

WeightLoader = Callable[..., None]

# Fused layers hold several checkpoint layers; ignore lists name the checkpoint layers.
FUSED_CHECKPOINT_NAMES: dict[str, tuple[str, ...]] = {
    "qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "gate_up_proj": ("gate_proj", "up_proj"),
}


class QuantizationError(ConfigError):
    """A quantization config or checkpoint that pagedlm cannot run, with what to change."""


def set_weight_attrs(param: torch.Tensor, attrs: Mapping[str, Any]) -> None:
    for key, value in attrs.items():
        setattr(param, key, value)


def new_param(shape: Iterable[int] | tuple[int, ...], dtype: torch.dtype, **attrs: Any) -> nn.Parameter:
    """An uninitialised frozen parameter tagged with ``attrs`` (see the module docstring)."""
    param = nn.Parameter(torch.empty(tuple(shape), dtype=dtype), requires_grad=False)
    set_weight_attrs(param, attrs)
    return param


def replace_param(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set (or swap) a parameter after loading: a new dtype or shape, the old one freed."""
    if hasattr(layer, name):
        delattr(layer, name)
    layer.register_parameter(name, nn.Parameter(value, requires_grad=False))


def matches_name(pattern: str, name: str) -> bool:
    """An ignore/target entry: ``re:<regex>`` (``re.match``, as compressed-tensors and vLLM do),
    or a module name matched as a dotted suffix (``lm_head`` matches ``lm_head``;
    ``model.layers.0.mlp.gate`` matches itself)."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern)


def checkpoint_names(prefix: str) -> list[str]:
    """The checkpoint layer names a (possibly fused) layer stands for."""
    head, _, last = prefix.rpartition(".")
    parts = FUSED_CHECKPOINT_NAMES.get(last)
    if parts is None:
        return [prefix]
    return [f"{head}.{p}" if head else p for p in parts]


def fused_scheme(prefix: str, scheme_for: Callable[[str], Any]) -> Any:
    """The scheme of the (possibly fused) layer at ``prefix``: ``scheme_for`` of each checkpoint
    layer it stands for (None: unquantized), which must agree: pagedlm runs one scheme per
    fused layer."""
    names = checkpoint_names(prefix)
    schemes = {scheme_for(name) for name in names}
    if len(schemes) > 1:
        raise QuantizationError(f"{prefix}: the checkpoint quantizes some of {names} differently from the others; "
                                "pagedlm fuses them and needs one scheme for the fused layer")
    return schemes.pop()


def is_layer_skipped(prefix: str, ignored: Iterable[str]) -> bool:
    """Whether the layer at ``prefix`` stays unquantized. A fused layer is skipped when all its
    parts are; some but not all is a checkpoint pagedlm cannot fuse, refused."""
    ignored = list(ignored)
    names = checkpoint_names(prefix)
    hits = [any(matches_name(p, n) for p in ignored) for n in names]
    if all(hits):
        return True
    if any(hits):
        raise QuantizationError(f"{prefix}: the checkpoint quantizes some of {names} but not all; "
                                "pagedlm fuses them and needs one scheme for the fused layer")
    return False


class QuantMethod(ABC):
    """How one linear layer stores and applies its weights (see the module docstring)."""

    @abstractmethod
    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype,
                       weight_loader: WeightLoader) -> None:
        """Register this rank's parameters on ``layer``."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """y = x W^T (+ bias) for x [num_tokens, input_size_per_partition]."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Runs once after the checkpoint (or dummy values) filled every parameter."""

    def input_codes_dtype(self, layer: nn.Module) -> torch.dtype | None:
        """The 8-bit type ``apply`` also takes its input in (``ActivationCodes`` quantized per
        token), so a producer may fuse the quantization; None: float activations only."""
        return None

    def dequantized_weight(self, layer: nn.Module) -> torch.Tensor:
        """W [N, K] in float32 after ``process_weights_after_loading`` (a checkpoint's MoE experts
        run dequantized: ``moe_experts``); formats that cannot say refuse."""
        raise QuantizationError(f"{type(self).__name__} cannot dequantize a layer; MoE experts in this format are "
                                "not supported")

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        """Random but valid values for ``--load-format dummy``, drawn from ``generator`` (on the
        layer's device). The default suits float parameters only; quantized methods override it."""
        for name, param in layer.named_parameters(recurse=False):
            if not param.dtype.is_floating_point or param.element_size() < 2:
                raise NotImplementedError(f"{type(self).__name__} needs init_dummy for {name} ({param.dtype})")
            fill_uniform(param, -0.05, 0.05, generator)


def fill_uniform(param: torch.Tensor, low: float, high: float, generator: torch.Generator) -> None:
    """Uniform values from ``generator``, which lives on the parameter's device (an 8B model's
    dummy weights are drawn on the GPU, not the host)."""
    values = torch.rand(param.shape, generator=generator, device=generator.device, dtype=torch.float32)
    param.data.copy_((values * (high - low) + low).to(param.dtype))


class QuantizationConfig(ABC):
    """One checkpoint's quantization: which layers are quantized, and how."""

    name: str = ""

    @classmethod
    @abstractmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "QuantizationConfig":
        """Parse ``quantization_config`` from config.json ({} when asked for online)."""

    @abstractmethod
    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantMethod | None:
        """The method for the linear layer at ``prefix``; None keeps it unquantized."""

    @classmethod
    def checkpoint_method_names(cls) -> tuple[str, ...]:
        """config.json ``quant_method`` values this config reads (default: its ``name``)."""
        return (cls.name,)

    @classmethod
    def override_checkpoint(cls, hf_quant_cfg: dict[str, Any]) -> bool:
        """Whether ``--quantization <name>`` may run a checkpoint of another ``quant_method``
        (e.g. a Marlin-style name over a GPTQ checkpoint). Default: no."""
        return False

    def checkpoint_tensor_name(self, name: str) -> str:
        """The parameter name a checkpoint tensor of the format loads into, for formats whose
        tensor names a module parameter cannot spell (bitsandbytes' ``weight.absmax``).
        Default: the name as it is."""
        return name

    def skip_checkpoint_tensor(self, name: str) -> bool:
        """Checkpoint tensors of the format that no parameter takes (they are dropped instead
        of refused as unknown)."""
        return False

    def supported_act_dtypes(self) -> tuple[torch.dtype, ...]:
        return (torch.float32, torch.float16, torch.bfloat16)
