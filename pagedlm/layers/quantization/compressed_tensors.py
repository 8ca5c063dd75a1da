"""``compressed-tensors`` (llm-compressor) checkpoints: 8-bit weights stored as is, and int
weights packed into int32 (``pack-quantized``: W4A16 / W8A16).

Read from ``quantization_config``: ``format`` (``float-quantized``, ``int-quantized`` or
``naive-quantized``: weights saved unpacked; ``pack-quantized``; a config group's own
``format`` where it has one, as ``mixed-precision`` checkpoints write it), ``config_groups``
(each: ``targets``, ``weights``, ``input_activations``), and ``ignore``. Each layer takes the
scheme of the group whose targets match it (``Linear`` matches every linear layer; ``re:``
entries are regexes over module names; a name or regex match in any group wins over
``Linear``); a layer no group targets stays unquantized.

Runs: unpacked weights 8-bit ``float`` (fp8 e4m3) or symmetric ``int``, ``strategy`` ``tensor``
or ``channel``, with input activations none (W8A16), dynamic per ``token``, or per ``tensor``
(static ``input_scale`` or dynamic) (``w8a8.py``); packed ``int`` weights of 4 or 8 bits,
``strategy`` ``group`` or ``channel``, symmetric or with zero points, with or without
``actorder``, activations unquantized (``compressed_tensors_wna16.py``, the AWQ / GPTQ kernels).
fp8 weights with ``strategy: block`` (llm-compressor's FP8_BLOCK) run as block-wise fp8 W8A16
(``block_fp8.py``; the activations are not quantized). Everything else (int block
strategies, asymmetric unpacked ints, packed activations, output
activations, sparse weights stored compressed by ``sparsity_config``, online transforms of
``transform_config``) is refused with the reason; a ``dense`` ``sparsity_config`` is plain
weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pagedlm.kernels.quant_reference import FP8_DTYPE
from pagedlm.layers.quantization import register_quantization_config
from pagedlm.layers.quantization.base import (
    QuantizationConfig,
    QuantizationError,
    QuantMethod,
    fused_scheme,
    is_layer_skipped,
    matches_name,
)
from pagedlm.layers.quantization.block_fp8 import BlockFp8LinearMethod
from pagedlm.layers.quantization.compressed_tensors_wna16 import CompressedTensorsWNA16Method, WNA16Scheme
from pagedlm.layers.quantization.w8a8 import W8LinearMethod, W8Scheme

UNPACKED_FORMATS = ("float-quantized", "int-quantized", "naive-quantized")
PACKED_FORMAT = "pack-quantized"
# Symmetric schemes store zero points of zeros (older llm-compressor versions): not needed.
_ZERO_POINT_SUFFIXES = (".weight_zero_point", ".input_zero_point")


def _refuse(what: str) -> QuantizationError:
    return QuantizationError(f"compressed-tensors: {what} is not supported (pagedlm runs 8-bit fp8/int8 weights "
                             "with per-tensor or per-channel scales, and pack-quantized 4- / 8-bit int weights with "
                             "group or channel scales)")


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


def parse_scheme(group: dict[str, Any], fmt: str | None = None) -> W8Scheme | WNA16Scheme | BlockScheme:
    """A config group's scheme; ``fmt``: the checkpoint's format, which the group's own
    ``format`` overrides."""
    weights = group.get("weights")
    if not weights:
        raise _refuse("a config group without weights")
    if group.get("output_activations"):
        raise _refuse("output activation quantization")
    fmt = group.get("format") or fmt
    if fmt == PACKED_FORMAT:
        return _packed_scheme(weights, group.get("input_activations"))
    if fmt not in UNPACKED_FORMATS:
        raise _refuse(f"format {fmt!r}")
    dtype = _weight_dtype(weights)
    strategy = weights.get("strategy", "tensor")
    if strategy == "block":
        return _block_scheme(weights, dtype, group.get("input_activations"))
    if strategy not in ("tensor", "channel") or weights.get("dynamic", False):
        raise _refuse(f"weight strategy {strategy!r}" + (" (dynamic)" if weights.get("dynamic") else ""))
    return W8Scheme(dtype, weight_per_channel=strategy == "channel",
                    activations=_activations(group.get("input_activations"), dtype))


@dataclass(frozen=True)
class BlockScheme:
    block: tuple[int, int]  # [output rows, input columns] per weight scale


def _block_scheme(weights: dict[str, Any], dtype: torch.dtype, activations: dict[str, Any] | None) -> BlockScheme:
    """llm-compressor's FP8_BLOCK: fp8 weights with one scale per block (run as W8A16, as the
    ``fp8`` format's block-wise checkpoints are); its activations, if quantized, dynamically."""
    structure = weights.get("block_structure")
    if dtype != FP8_DTYPE or weights.get("dynamic", False):
        raise _refuse(f"block weight strategy with {weights.get('type')} weights")
    if (not isinstance(structure, (list, tuple)) or len(structure) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in structure)):
        raise _refuse(f"block weight strategy with block_structure {structure!r}")
    if activations and not activations.get("dynamic", False):
        raise _refuse("block weights with static input activation scales")
    return BlockScheme((int(structure[0]), int(structure[1])))


def _packed_scheme(weights: dict[str, Any], activations: dict[str, Any] | None) -> WNA16Scheme:
    bits, kind = weights.get("num_bits"), weights.get("type", "int")
    if kind != "int" or bits not in (4, 8):
        raise _refuse(f"pack-quantized {kind}{bits} weights")
    if activations:
        raise _refuse("pack-quantized weights with quantized input activations (W4A8)")
    strategy = weights.get("strategy", "group")
    if strategy not in ("group", "channel") or weights.get("dynamic", False):
        raise _refuse(f"pack-quantized weight strategy {strategy!r}")
    group_size = int(weights.get("group_size") or 0) if strategy == "group" else -1
    if strategy == "group" and group_size <= 0:
        raise _refuse(f"pack-quantized group strategy with group_size {weights.get('group_size')!r}")
    # only "group" act order stores weight_g_idx ("weight" / "static" quantize in activation order
    # but keep the groups contiguous, as vLLM reads it)
    return WNA16Scheme(bits, group_size, bool(weights.get("symmetric", True)), weights.get("actorder") == "group")


@register_quantization_config
class CompressedTensorsConfig(QuantizationConfig):
    name = "compressed-tensors"

    def __init__(self, groups: list[tuple[list[str], W8Scheme | WNA16Scheme | BlockScheme]], ignore: list[str]) -> None:
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
        # No config groups (a checkpoint with only kv_cache_scheme, or dense sparsity): every
        # linear layer stays unquantized, as in vLLM; the weights' format is then moot.
        fmt = hf_quant_cfg.get("format")
        groups = [(list(g.get("targets") or []), parse_scheme(g, fmt))
                  for g in (hf_quant_cfg.get("config_groups") or {}).values()]
        return cls(groups, list(hf_quant_cfg.get("ignore") or []))

    def _scheme_for(self, name: str) -> W8Scheme | WNA16Scheme | BlockScheme | None:
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
        scheme = fused_scheme(prefix, self._scheme_for)
        if scheme is None:
            return None
        if isinstance(scheme, BlockScheme):
            return BlockFp8LinearMethod(scheme.block, scale_name="weight_scale")
        return CompressedTensorsWNA16Method(scheme) if isinstance(scheme, WNA16Scheme) else W8LinearMethod(scheme)

    def skip_checkpoint_tensor(self, name: str) -> bool:
        """Zero points of symmetric schemes (zeros, which older llm-compressor versions store);
        an asymmetric packed scheme's weight_zero_point loads."""
        if not name.endswith(_ZERO_POINT_SUFFIXES):
            return False
        scheme = self._scheme_for(name.rsplit(".", 1)[0])
        return not (isinstance(scheme, WNA16Scheme) and not scheme.symmetric and name.endswith(".weight_zero_point"))
