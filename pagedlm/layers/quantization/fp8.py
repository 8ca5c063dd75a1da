"""``fp8``: FP8 (e4m3) checkpoints in the HF / AutoFP8 / vLLM format, and online FP8.

Checkpoint (``quantization_config: {"quant_method": "fp8", "activation_scheme": "static" |
"dynamic", "ignored_layers": [...]}``): per linear layer ``weight`` float8_e4m3fn [out, in],
``weight_scale`` float32 scalar (per tensor), and with static activations ``input_scale``
float32 scalar. Dynamic activations are quantized per token. Block-wise checkpoints
(``weight_block_size``, ``weight_scale_inv`` per block: Qwen's ``*-FP8``, DeepSeek-V3) run as
W8A16 through ``block_fp8.BlockFp8LinearMethod``.

Online (``--quantization fp8`` on a bf16 / fp16 / fp32 checkpoint): weights are quantized
per output channel while loading, activations per token at run time.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pagedlm.kernels.quant_reference import FP8_DTYPE
from pagedlm.layers.quantization import register_quantization_config
from pagedlm.layers.quantization.base import QuantizationConfig, QuantizationError, QuantMethod, is_layer_skipped
from pagedlm.layers.quantization.block_fp8 import BlockFp8LinearMethod
from pagedlm.layers.quantization.w8a8 import W8LinearMethod, W8Scheme


@register_quantization_config
class Fp8Config(QuantizationConfig):
    name = "fp8"

    def __init__(self, serialized: bool, activation_scheme: str, ignored_layers: list[str],
                 block: tuple[int, int] | None = None) -> None:
        self.serialized = serialized
        self.activation_scheme = activation_scheme
        self.ignored_layers = ignored_layers
        self.block = block  # weight_block_size: [output rows, input columns] per scale

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "Fp8Config":
        if not hf_quant_cfg:  # --quantization fp8 on an unquantized checkpoint
            return cls(serialized=False, activation_scheme="dynamic", ignored_layers=[])
        scheme = hf_quant_cfg.get("activation_scheme", "dynamic")
        if scheme not in ("static", "dynamic"):
            raise QuantizationError(f"fp8 activation_scheme must be 'static' or 'dynamic', got {scheme!r}")
        block = hf_quant_cfg.get("weight_block_size")
        if block is not None:
            if (not isinstance(block, (list, tuple)) or len(block) != 2
                    or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
                raise QuantizationError(f"fp8 weight_block_size must be two positive integers, got {block!r}")
            if scheme != "dynamic":
                raise QuantizationError("block-wise fp8 (weight_block_size) takes activation_scheme 'dynamic' only")
            block = (int(block[0]), int(block[1]))
        ignored = hf_quant_cfg.get("ignored_layers") or hf_quant_cfg.get("modules_to_not_convert") or []
        return cls(serialized=True, activation_scheme=scheme, ignored_layers=list(ignored), block=block)

    def get_quant_method(self, layer: nn.Module, prefix: str) -> QuantMethod | None:
        if is_layer_skipped(prefix, ["lm_head", *self.ignored_layers]):
            return None
        if not self.serialized:
            return W8LinearMethod(W8Scheme(FP8_DTYPE, weight_per_channel=True, activations="token", online=True))
        if self.block is not None:
            return BlockFp8LinearMethod(self.block)
        activations = "static" if self.activation_scheme == "static" else "token"
        return W8LinearMethod(W8Scheme(FP8_DTYPE, weight_per_channel=False, activations=activations))
