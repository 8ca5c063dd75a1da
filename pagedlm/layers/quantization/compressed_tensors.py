"""``compressed-tensors`` (llm-compressor) checkpoints with 8-bit weights stored as is.

Read from ``quantization_config``: ``format`` (``float-quantized``, ``int-quantized`` or
``naive-quantized``: weights saved unpacked), ``config_groups`` (each: ``targets``,
``weights``, ``input_activations``), and ``ignore``. Each layer takes the scheme of the group
whose targets match it (``Linear`` matches every linear layer; ``re:`` entries are regexes
over module names; a name or regex match in any group wins over ``Linear``); a layer no
group targets stays unquantized.

Runs: weights 8-bit ``float`` (fp8 e4m3) or symmetric ``int``, ``strategy`` ``tensor`` or
``channel``; input activations none (W8A16), dynamic per ``token``, or per ``tensor`` (static
``input_scale`` or dynamic). Everything else (group / block strategies, asymmetric ints,
packed 4-bit ``pack-quantized``, output activations, sparse weights stored compressed by
``sparsity_config``, online transforms of ``transform_config``) is refused with the reason; a ``dense`` ``sparsity_config`` is plain weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedlm.kernels.quant_reference import FP8_DTYPE
from pagedlm.layers.quantization import register_quantization_config
from pagedlm.layers.quantization.base import (
    QuantizationConfig,
    QuantizationError,
    QuantMethod,
    checkpoint_names,
    is_layer_skipped,
    matches_name,
)
from pagedlm.layers.quantization.w8a8 import W8LinearMethod, W8Scheme

UNPACKED_FORMATS = ("float-quantized", "int-quantized", "naive-quantized")
# Symmetric schemes store zero points of zeros (older llm-compressor versions): not needed.
_ZERO_POINT_SUFFIXES = (".weight_zero_point", ".input_zero_point")


def _refuse(what: str) -> QuantizationError:
    return QuantizationError(f"compressed-tensors: {what} is not supported (pagedlm runs 8-bit fp8/int8 weights "
                             "with per-tensor or per-channel scales)")


def _weight_dtype(args: dict[str, Any]) -> torch.dtype:
    if args.get("num_bits") != 8:
        raise _refuse(f"{args.get('num_bits')}-bit weights")
    kind = args.get("type", "int")
    if not args.get("symmetric", True):  # the zero points are dropped at load: symmetric only
        raise _refuse(f"asymmetric {kind}8 weights (with zero points)")
    if kind == "float":
        return FP8_DTYPE
    if kind == "int":
        return torch.int8
    raise _refuse(f"weight type {kind!r}")


def _activations(args: dict[str, Any] | None, weight_dtype: torch.dtype) -> str | None:
    if args is None:
        return None
    if args.get("num_bits") != 8 or _weight_dtype({**args, "symmetric": True}) != weight_dtype:
        raise _refuse(f"input activations {args.get('type')}{args.get('num_bits')} with {weight_dtype} weights")
    if not args.get("symmetric", True):
        raise _refuse("asymmetric activations")
    strategy, dynamic = args.get("strategy", "tensor"), bool(args.get("dynamic", False))
    if strategy == "token" and dynamic:
        return "token"
    if strategy == "tensor":
        return "tensor" if dynamic else "static"
    raise _refuse(f"input activation strategy {strategy!r} (dynamic={dynamic})")


def parse_scheme(group: dict[str, Any]) -> W8Scheme:
    weights = group.get("weights")
    if not weights:
        raise _refuse("a config group without weights")
    if group.get("output_activations"):
        raise _refuse("output activation quantization")
    dtype = _weight_dtype(weights)
    strategy = weights.get("strategy", "tensor")
    if strategy not in ("tensor", "channel") or weights.get("dynamic", False):
        raise _refuse(f"weight strategy {strategy!r}" + (" (dynamic)" if weights.get("dynamic") else ""))
    return W8Scheme(dtype, weight_per_channel=strategy == "channel",
                    activations=_activations(group.get("input_activations"), dtype))


@register_quantization_config
class CompressedTensorsConfig(QuantizationConfig):
    name = "compressed-tensors"

    def __init__(self, groups: list[tuple[list[str], W8Scheme]], ignore: list[str]) -> None:
        self.groups = groups
        self.ignore = ignore

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "CompressedTensorsConfig":
        if not hf_quant_cfg:
            raise QuantizationError("--quantization compressed-tensors needs a compressed-tensors checkpoint (its "
                                    "config.json quantization_config); for online quantization use fp8")
        sparsity = hf_quant_cfg.get("sparsity_config") or {}
        if sparsity.get("format", "dense") != "dense":  # dense: a sparse model stored as plain weights
            raise _refuse(f"sparsity_config format {sparsity.get('format')!r} (compressed sparse weights, "
                          f"{sparsity.get('sparsity_structure')})")
        if (hf_quant_cfg.get("transform_config") or {}).get("config_groups"):
            raise _refuse("transform_config (online Hadamard / rotation transforms, e.g. QuIP or SpinQuant)")
        groups = [(list(g.get("targets") or []), parse_scheme(g))
                  for g in (hf_quant_cfg.get("config_groups") or {}).values()]
        # No config groups (a checkpoint with only kv_cache_scheme, or dense sparsity): every
        # linear layer stays unquantized, as in vLLM; the weights' format is then moot.
        fmt = hf_quant_cfg.get("format")
        if groups and fmt not in UNPACKED_FORMATS:
            raise _refuse(f"format {fmt!r}")
        return cls(groups, list(hf_quant_cfg.get("ignore") or []))

    def _scheme_for(self, name: str) -> W8Scheme | None:
        """As compressed-tensors and vLLM resolve targets: a layer name or ``re:`` regex in any
        group wins over a module class (``Linear``), whatever the order of the groups."""
        for by_name in (True, False):
            for targets, scheme in self.groups:
                if any(matches_name(t, name) if by_name else t == "Linear" for t in targets):
                    return scheme
        return None

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantMethod | None:
        if is_layer_skipped(prefix, ["lm_head", *self.ignore]):
            return None
        schemes = {self._scheme_for(name) for name in checkpoint_names(prefix)}
        if len(schemes) > 1:
            raise QuantizationError(f"{prefix}: the checkpoint quantizes the parts of this fused layer with "
                                    "different schemes; pagedlm needs one scheme per fused layer")
        scheme = schemes.pop()
        return W8LinearMethod(scheme) if scheme is not None else None

    def skip_checkpoint_tensor(self, name: str) -> bool:
        return name.endswith(_ZERO_POINT_SUFFIXES)
