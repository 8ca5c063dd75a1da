"""GPTQ checkpoints (AutoGPTQ / GPTQModel / optimum, ``quant_method: gptq``), 4 and 8 bits.

Per linear layer, with K inputs, N outputs, pack = 32 / bits, G = ceil(K / group_size):

  qweight  int32 [K / pack, N]   codes packed along the input dim, sequential: field j of
                                 row r holds input r * pack + j
  qzeros   int32 [G, N / pack]   zero points packed along the output dim, sequential
  scales   fp16  [G, N]
  g_idx    int32 [K]             the group of each input (a permutation of k // group_size
                                 in act-order / ``desc_act`` checkpoints)
  W[n, k] = (code[k, n] - zero[g_idx[k], n]) * scale[g_idx[k], n]

The zero-point offset: AutoGPTQ's packer stores ``zero - 1`` and its kernels add the 1 back
(``checkpoint_format: gptq``, the default, "v1"); GPTQModel's ``gptq_v2`` stores the zero
itself. ``sym`` changes only which zero the quantizer picked (2**(bits-1) when symmetric), not
the layout, so both run here. At load the codes are repacked into the shared internal layout
(``wna16.py``); act-order rows are sorted by group so the kernel sees whole groups.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pagedlm.layers.quantization import register_quantization_config
from pagedlm.layers.quantization.base import (
    QuantizationConfig,
    QuantizationError,
    WeightLoader,
    checkpoint_names,
    new_param,
)
from pagedlm.layers.quantization.wna16 import (
    WNA16LinearMethod,
    init_dummy_wna16,
    order_rows,
    plan_groups,
    unpack_along_cols,
    unpack_along_rows,
)

_SUPPORTED_BITS = (4, 8)
_FORMATS = {"gptq": True, "gptq_v2": False}  # checkpoint_format -> zeros stored minus one


@register_quantization_config
class GPTQConfig(QuantizationConfig):
    name = "gptq"

    def __init__(self, bits: int, group_size: int, desc_act: bool, zeros_minus_one: bool,
                 block_modules: list[str] | None) -> None:
        self.bits = bits
        self.group_size = group_size
        self.desc_act = desc_act
        self.zeros_minus_one = zeros_minus_one
        self.block_modules = block_modules  # modules_in_block_to_quantize, flattened; None: all

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "GPTQConfig":
        if not hf_quant_cfg:
            raise QuantizationError("--quantization gptq needs a GPTQ checkpoint (config.json quantization_config "
                                    "with quant_method 'gptq'); pagedlm does not quantize to GPTQ while loading "
                                    "(try --quantization fp8)")
        bits = int(hf_quant_cfg.get("bits", 4))
        if bits not in _SUPPORTED_BITS:
            raise QuantizationError(f"GPTQ with {bits}-bit weights is not supported; pagedlm runs 4- and 8-bit GPTQ")
        group_size = int(hf_quant_cfg.get("group_size", 128))
        if group_size != -1 and group_size <= 0:
            raise QuantizationError(f"GPTQ group size {group_size} is not supported; use a positive size or -1")
        fmt = str(hf_quant_cfg.get("checkpoint_format") or "gptq").lower()
        if hf_quant_cfg.get("is_marlin_format"):  # older optimum / AutoGPTQ spelling
            fmt = "marlin"
        if fmt not in _FORMATS:
            raise QuantizationError(f"GPTQ checkpoint_format {fmt!r} stores its weights in another layout; pagedlm "
                                    f"runs {sorted(_FORMATS)}")
        if hf_quant_cfg.get("lm_head"):
            raise QuantizationError("GPTQ checkpoints with a quantized lm_head are not supported")
        if hf_quant_cfg.get("dynamic"):
            raise QuantizationError("GPTQ per-module overrides ('dynamic') are not supported")
        blocks = hf_quant_cfg.get("modules_in_block_to_quantize")
        block_modules = [m for group in blocks for m in (group if isinstance(group, list) else [group])] \
            if blocks else None
        return cls(bits, group_size, bool(hf_quant_cfg.get("desc_act", False)), _FORMATS[fmt], block_modules)

    def get_quant_method(self, layer: nn.Module, prefix: str) -> "GPTQLinearMethod | None":
        if prefix.split(".")[-1] == "lm_head" or not self._quantized(prefix):
            return None
        return GPTQLinearMethod(self)

    def _quantized(self, prefix: str) -> bool:
        if self.block_modules is None:
            return True
        hits = [any(name == m or name.endswith("." + m) for m in self.block_modules)
                for name in checkpoint_names(prefix)]
        if any(hits) and not all(hits):
            raise QuantizationError(f"{prefix}: modules_in_block_to_quantize quantizes only some of its fused parts; "
                                    "pagedlm needs one scheme for the fused layer")
        return all(hits)


class GPTQLinearMethod(WNA16LinearMethod):
    def __init__(self, config: GPTQConfig) -> None:
        super().__init__(bits=config.bits, group_size=config.group_size)
        self.config = config
        self.pack = 32 // config.bits

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype,
                       weight_loader: WeightLoader) -> None:
        prefix, pack = getattr(layer, "prefix", ""), self.pack
        k, n = input_size_per_partition, sum(output_partition_sizes)
        if k % pack or any(size % pack for size in output_partition_sizes):
            raise QuantizationError(f"{prefix}: {self.bits}-bit GPTQ needs input and output widths per rank that are "
                                    f"multiples of {pack}, got {k} and {output_partition_sizes}")
        num_groups, sharded_groups = plan_groups(layer, self.group_size, self.config.desc_act, k, input_size,
                                                 params_dtype)
        group_dims = {"input_dim": 0} if sharded_groups else {}
        loader = {"weight_loader": weight_loader}
        layer.register_parameter("qweight", new_param((k // pack, n), torch.int32, input_dim=0, output_dim=1,
                                                      packed_dim=0, pack_factor=pack, **loader))
        layer.register_parameter("qzeros", new_param((num_groups, n // pack), torch.int32, output_dim=1, packed_dim=1,
                                                     pack_factor=pack, **group_dims, **loader))
        layer.register_parameter("scales", new_param((num_groups, n), torch.float16, output_dim=1, **group_dims,
                                                     **loader))
        layer.register_parameter("g_idx", new_param((k,), torch.int32, input_dim=0, **loader))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        codes = unpack_along_rows(layer.qweight.data, self.bits)  # [K, N]
        zeros = unpack_along_cols(layer.qzeros.data, self.bits)  # [G, N]
        if self.config.zeros_minus_one:
            zeros = zeros + 1
        codes, perm, row_groups, group_size = order_rows(layer, codes, layer.g_idx.data, zeros.shape[0],
                                                         self.group_size)
        dtype = layer.wna16_act_dtype
        self.finish_repack(layer, codes, layer.scales.data.to(dtype), zeros.to(dtype), perm, row_groups, group_size,
                           drop=("qzeros", "g_idx"))

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        init_dummy_wna16(layer, self.bits, generator)
        rows = torch.arange(layer.g_idx.numel()) + layer.wna16_first_row
        layer.g_idx.data.copy_(rows // layer.wna16_group_size)
