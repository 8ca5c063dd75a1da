"""AWQ checkpoints in AutoAWQ's GEMM layout (``quant_method: awq``, ``version: gemm``).

Per linear layer, with K inputs, N outputs, G = K / group_size groups:

  qweight  int32 [K, N / 8]   eight 4-bit codes per word along the output dim, in AWQ's
                              interleaved order: field i (bits 4i..4i+3) of word c holds
                              output column 8c + AWQ_ORDER[i]
  qzeros   int32 [G, N / 8]   the zero points, packed the same way (no offset)
  scales   fp16  [G, N]
  W[n, k] = (code[k, n] - zero[k // group_size, n]) * scale[k // group_size, n]

(as ``awq/utils/packing_utils.py:dequantize_gemm`` and ``WQLinear_GEMM.from_linear`` in
AutoAWQ define it). At load the codes are repacked into the shared internal layout
(``wna16.py``) and run by the W4A16 GEMM.
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
    check_group_size,
    init_dummy_wna16,
    unpack_along_cols,
)

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
_PACK = 8  # 4-bit codes per int32


@register_quantization_config
class AWQConfig(QuantizationConfig):
    name = "awq"

    def __init__(self, group_size: int, modules_to_not_convert: list[str]) -> None:
        self.bits = 4
        self.group_size = group_size
        self.modules_to_not_convert = modules_to_not_convert

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "AWQConfig":
        if not hf_quant_cfg:
            raise QuantizationError("--quantization awq needs a checkpoint quantized with AutoAWQ (config.json "
                                    "quantization_config with quant_method 'awq'); pagedlm does not quantize to AWQ "
                                    "while loading (try --quantization fp8)")
        bits = int(hf_quant_cfg.get("w_bit", hf_quant_cfg.get("bits", 4)))
        if bits != 4:
            raise QuantizationError(f"AWQ with {bits}-bit weights is not supported; only 4-bit AWQ checkpoints run")
        version = str(hf_quant_cfg.get("version", "gemm")).lower()
        if version != "gemm":
            raise QuantizationError(f"AWQ version {version!r} stores its weights in another layout; pagedlm runs "
                                    "AutoAWQ's 'gemm' layout only")
        backend = str(hf_quant_cfg.get("backend", "autoawq")).lower()
        if backend not in ("autoawq", "awqbackendpackingmethod.autoawq"):
            raise QuantizationError(f"AWQ backend {backend!r} packs weights differently; pagedlm runs AutoAWQ "
                                    "checkpoints")
        if not hf_quant_cfg.get("zero_point", True):
            raise QuantizationError("AWQ without zero points (zero_point: false) is not supported")
        group_size = int(hf_quant_cfg.get("q_group_size", hf_quant_cfg.get("group_size", 128)))
        if group_size != -1 and group_size <= 0:
            raise QuantizationError(f"AWQ group size {group_size} is not supported; use a positive size or -1")
        return cls(group_size, list(hf_quant_cfg.get("modules_to_not_convert") or []))

    def get_quant_method(self, layer: nn.Module, prefix: str) -> "AWQLinearMethod | None":
        if prefix.split(".")[-1] == "lm_head" or self._skipped(prefix):
            return None
        return AWQLinearMethod(self.group_size)

    def _skipped(self, prefix: str) -> bool:
        """AutoAWQ's ``modules_to_not_convert`` are substrings of module names (as vLLM reads
        them); a fused layer needs all or none of its parts skipped."""
        hits = [any(m in name for m in self.modules_to_not_convert) for name in checkpoint_names(prefix)]
        if any(hits) and not all(hits):
            raise QuantizationError(f"{prefix}: modules_to_not_convert keeps some of its fused parts unquantized; "
                                    "pagedlm needs one scheme for the fused layer")
        return all(hits) and bool(hits)


class AWQLinearMethod(WNA16LinearMethod):
    def __init__(self, group_size: int) -> None:
        super().__init__(bits=4, group_size=group_size)

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype,
                       weight_loader: WeightLoader) -> None:
        prefix = getattr(layer, "prefix", "")
        for size in output_partition_sizes:
            if size % _PACK:
                raise QuantizationError(f"{prefix}: AWQ needs output widths per rank that are multiples of 8, got "
                                        f"{output_partition_sizes}")
        k, n = input_size_per_partition, sum(output_partition_sizes)
        # group_size -1 is one group over the whole input: a row-parallel shard keeps it whole.
        group_size = self.group_size if self.group_size != -1 else input_size
        sharded_groups = self.group_size != -1
        check_group_size(group_size if sharded_groups else k, k, prefix)
        num_groups = k // group_size if sharded_groups else 1
        group_dims = {"input_dim": 0} if sharded_groups else {}
        packed = {"output_dim": 1, "packed_dim": 1, "pack_factor": _PACK, "weight_loader": weight_loader}
        layer.register_parameter("qweight", new_param((k, n // _PACK), torch.int32, input_dim=0, **packed))
        layer.register_parameter("qzeros", new_param((num_groups, n // _PACK), torch.int32, **group_dims, **packed))
        layer.register_parameter("scales", new_param((num_groups, n), torch.float16, output_dim=1,
                                                     weight_loader=weight_loader, **group_dims))
        layer.wna16_act_dtype = params_dtype
        layer.wna16_group_size = group_size if sharded_groups else k

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        codes = unpack_along_cols(layer.qweight.data, 4, AWQ_ORDER)  # [K, N]
        zeros = unpack_along_cols(layer.qzeros.data, 4, AWQ_ORDER)  # [G, N]
        dtype = layer.wna16_act_dtype
        self.finish_repack(layer, codes, layer.scales.data.to(dtype), zeros.to(dtype), None, None,
                           layer.wna16_group_size, drop=("qzeros",))

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        init_dummy_wna16(layer, self.bits, generator)
