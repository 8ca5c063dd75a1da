"""Pre-quantized bitsandbytes 4-bit checkpoints (``quant_method: bitsandbytes``, ``load_in_4bit``),
NF4 and FP4, with and without double quantization, as transformers / bitsandbytes save them
(``Params4bit`` + ``QuantState.as_dict(packed=True)``; also Unsloth's ``*-bnb-4bit`` models).

Per quantized linear layer ``X`` with a weight W of shape [N, K] (n = N * K elements):

  X.weight                                 uint8 [ceil(n / 2), 1]  two 4-bit codes per byte
                                           along W flattened row-major; element 2i is the
                                           HIGH nibble, 2i + 1 the low one
                                           (``packed = q[::2] << 4 | q[1::2]``); another
                                           ``bnb_4bit_quant_storage`` dtype holds the same bytes
  X.weight.absmax                          float32 [ceil(n / blocksize)], one per block of
                                           ``blocksize`` (64) consecutive flat elements; with
                                           double quantization: uint8 codes of (absmax - offset)
  X.weight.quant_map                       float32 [16], the code table (NF4 or FP4)
  X.weight.nested_absmax                   float32 [ceil(blocks / 256)]  (double quant only)
  X.weight.nested_quant_map                float32 [256], bitsandbytes' signed dynamic map
  X.weight.quant_state.bitsandbytes__nf4   uint8, the JSON of quant_type, blocksize, dtype,
  (or __fp4)                               shape, and nested_blocksize / nested_dtype /
                                           nested_offset with double quantization

  absmax[b] = nested_quant_map[absmax_code[b]] * nested_absmax[b // nested_blocksize] + nested_offset
  W.flat[i] = table[code[i]] * absmax[i // blocksize]

(``bitsandbytes/functional.py``: ``quantize_4bit`` / ``dequantize_4bit`` / ``QuantState``; the
default backend's ``_dequantize_4bit_impl``.) Here the codes stay packed, reshaped to
[N, K / 2] so tensor parallelism shards them as rows and columns; the absmax of double
quantization is dequantized once at load, per checkpoint tensor (each of q/k/v, gate/up has its
own offset and nested scales), and kept as float32 [N, K / blocksize]. Blocks must therefore not
cross rows: K, and each rank's input width, must be multiples of the blocksize (true of every
real model; refused otherwise). On a GPU (``kernels/bnb_linear.py``) one row goes through a
4-bit GEMV and batches of up to 1,024 rows through a tiled 4-bit GEMM, each reading the packed
codes once (``pagedlm/kernels/triton_nf4.py``), where they beat dequantizing the weight in one
kernel and running the dense GEMM, which serves the rest; on the CPU ``apply`` dequantizes the
weight to the activations' dtype on every call and multiplies (the PyTorch reference).

In-flight (``--quantization bitsandbytes`` on a float checkpoint, as vLLM runs it): each linear
layer's weight is quantized while loading to NF4 in blocks of 64 along its rows (the codes
nearest the block-normalised weights, bitsandbytes' ``quantize_4bit``) with float32 absmax (no
double quantization), then runs as a checkpoint's would; a layer's input width must be whole
blocks. 8-bit LLM.int8 checkpoints (``load_in_8bit``) are refused.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from pagedlm.kernels.bnb_linear import bnb_linear
from pagedlm.layers.quantization import register_quantization_config
from pagedlm.layers.quantization.base import (
    QuantizationConfig,
    QuantizationError,
    QuantMethod,
    WeightLoader,
    checkpoint_names,
    new_param,
    replace_param,
    set_weight_attrs,
)

# bitsandbytes' code tables (functional.get_4bit_type; its CUDA kernels hard-code the same
# values). FP4 is e2m1 without infinities, normalised by its largest magnitude, 12.
NF4_TABLE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)
FP4_TABLE = tuple(v / 12.0 for v in (0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0,
                                     -0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0))
TABLES = {"nf4": NF4_TABLE, "fp4": FP4_TABLE}
_COMPUTE_DTYPES = ("float16", "bfloat16", "float32")
# Checkpoint tensor suffix -> our parameter name (a parameter name cannot hold a dot).
_AUX = {
    ".weight.absmax": "weight_absmax",
    ".weight.quant_map": "weight_quant_map",
    ".weight.nested_absmax": "weight_nested_absmax",
    ".weight.nested_quant_map": "weight_nested_quant_map",
}
_STATE_SUFFIX = ".weight.quant_state.bitsandbytes__"


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., M] -> int64 codes [..., 2M], the high nibble first (bitsandbytes' order)."""
    packed = packed.to(torch.uint8)
    return torch.stack(((packed >> 4) & 0xF, packed & 0xF), dim=-1).flatten(-2).long()


def dequantize_nested_absmax(codes: torch.Tensor, nested_absmax: torch.Tensor, nested_quant_map: torch.Tensor,
                             nested_blocksize: int, offset: float) -> torch.Tensor:
    """The per-block absmax of a double-quantized weight, float32 [blocks]
    (``dequantize_blockwise(absmax, state2) + offset``)."""
    codes = codes.reshape(-1).long()
    scale = nested_absmax.float().reshape(-1).repeat_interleave(nested_blocksize)[:codes.numel()]
    return nested_quant_map.float().reshape(-1)[codes] * scale + float(offset)


def byte_table(table: torch.Tensor) -> torch.Tensor:
    """float32 [256, 2]: the two values a packed byte holds (high nibble first), so that a
    weight is dequantized with one lookup per byte."""
    table = table.float()
    return torch.stack((table.repeat_interleave(16), table.repeat(16)), dim=-1)


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, table: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """W [N, K] from codes packed [N, K / 2], absmax [N, K / blocksize] (float32) and the
    code table (16 values, or ``byte_table``'s [256, 2])."""
    pairs = table if table.dim() == 2 else byte_table(table)
    n, k = packed.shape[0], packed.shape[1] * 2
    blocks = absmax.shape[-1]
    values = pairs[packed.int()].view(n, blocks, k // blocks) * absmax.unsqueeze(-1)  # float32, as bnb
    return values.view(n, k).to(dtype)


ONLINE_BLOCKSIZE = 64  # bitsandbytes' default blocksize, as vLLM quantizes in flight


def quantize_4bit_rows(weight: torch.Tensor, table: torch.Tensor,
                       blocksize: int = ONLINE_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] -> (codes packed uint8 [N, K / 2], high nibble first; absmax float32 [N, K /
    blocksize]): each block of ``blocksize`` inputs of a row scaled by its largest magnitude,
    each weight the index of the nearest value of the ascending ``table`` (bitsandbytes'
    ``quantize_4bit``)."""
    n, k = weight.shape
    blocks = weight.float().view(n, k // blocksize, blocksize)
    absmax = blocks.abs().amax(dim=-1)
    scaled = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny).unsqueeze(-1)
    table = table.to(weight.device, torch.float32)
    if not bool((table[1:] > table[:-1]).all()):
        raise ValueError("quantize_4bit_rows needs an ascending code table (NF4)")
    # the nearest value by the midpoints between neighbours (a tie goes to the lower code, as
    # argmin's first minimum would), without a [N, K, 16] distance tensor
    codes = torch.bucketize(scaled, (table[1:] + table[:-1]) / 2).view(n, k)
    packed = (codes[:, 0::2] << 4 | codes[:, 1::2]).to(torch.uint8)
    return packed.contiguous(), absmax.contiguous()


def parse_quant_state(blob: torch.Tensor) -> dict[str, Any]:
    try:
        return json.loads(bytes(blob.detach().cpu().to(torch.uint8).reshape(-1).tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QuantizationError(f"a bitsandbytes quant_state tensor is not the JSON bitsandbytes writes: {e}") from e


def _skip_match(name: str, pattern: str) -> bool:
    """transformers' ``should_convert_module`` rule for ``llm_int8_skip_modules``: the pattern
    (a regex) matches from the start up to a module boundary, or the name ends with it."""
    try:
        if re.match(rf"(?:{pattern})(?:(?<=\.)|(?=\.|$))", name):
            return True
    except re.error:
        pass
    return name.endswith(pattern)


@register_quantization_config
class BitsAndBytesConfig(QuantizationConfig):
    name = "bitsandbytes"

    def __init__(self, quant_type: str, double_quant: bool, skip_modules: list[str], online: bool = False) -> None:
        self.quant_type = quant_type
        self.double_quant = double_quant
        self.skip_modules = skip_modules
        self.online = online  # a float checkpoint quantized while loading

    @classmethod
    def from_config(cls, hf_quant_cfg: dict[str, Any]) -> "BitsAndBytesConfig":
        if not hf_quant_cfg:  # --quantization bitsandbytes on a float checkpoint: NF4 while loading
            return cls("nf4", False, [], online=True)
        in_4bit = bool(hf_quant_cfg.get("load_in_4bit", hf_quant_cfg.get("_load_in_4bit", False)))
        in_8bit = bool(hf_quant_cfg.get("load_in_8bit", hf_quant_cfg.get("_load_in_8bit", False)))
        if in_8bit:
            raise QuantizationError("bitsandbytes 8-bit (LLM.int8, load_in_8bit) checkpoints are not supported; "
                                    "pagedlm runs pre-quantized 4-bit NF4 / FP4 bitsandbytes checkpoints")
        if not in_4bit:
            raise QuantizationError("the bitsandbytes quantization_config sets neither load_in_4bit nor load_in_8bit; "
                                    "pagedlm runs pre-quantized 4-bit (load_in_4bit) checkpoints")
        quant_type = str(hf_quant_cfg.get("bnb_4bit_quant_type") or "fp4").lower()
        if quant_type not in TABLES:
            raise QuantizationError(f"bitsandbytes bnb_4bit_quant_type {quant_type!r} is not supported; pagedlm runs "
                                    f"{sorted(TABLES)}")
        compute = hf_quant_cfg.get("bnb_4bit_compute_dtype")
        if compute is not None and str(compute).removeprefix("torch.") not in _COMPUTE_DTYPES:
            raise QuantizationError(f"bitsandbytes bnb_4bit_compute_dtype {compute!r} is not supported; use one of "
                                    f"{list(_COMPUTE_DTYPES)}")
        skip = hf_quant_cfg.get("llm_int8_skip_modules")
        if skip is None:
            skip = hf_quant_cfg.get("modules_to_not_convert")
        if isinstance(skip, str):
            skip = [skip]
        return cls(quant_type, bool(hf_quant_cfg.get("bnb_4bit_use_double_quant", False)), list(skip or []))

    def get_quant_method(self, layer: nn.Module, prefix: str) -> "BitsAndBytesLinearMethod | None":
        if prefix.split(".")[-1] == "lm_head":
            return None
        names = checkpoint_names(prefix)
        hits = [any(_skip_match(n, p) for p in self.skip_modules) for n in names]
        if all(hits):
            return None
        if any(hits):
            raise QuantizationError(f"{prefix}: llm_int8_skip_modules keeps some of {names} unquantized but not all; "
                                    "pagedlm fuses them and needs one scheme for the fused layer")
        return BitsAndBytesLinearMethod(self)

    def checkpoint_tensor_name(self, name: str) -> str:
        for suffix, ours in _AUX.items():
            if name.endswith(suffix):
                return name[: -len(suffix)] + "." + ours
        head, sep, kind = name.rpartition(_STATE_SUFFIX)
        if sep:
            if kind != self.quant_type:
                raise QuantizationError(f"{name}: a bitsandbytes {kind!r} weight in a checkpoint whose "
                                        f"quantization_config says bnb_4bit_quant_type {self.quant_type!r}")
            return head + ".weight_quant_state"
        return name


class BitsAndBytesLinearMethod(QuantMethod):
    def __init__(self, config: BitsAndBytesConfig) -> None:
        self.config = config

    def _aux_names(self) -> tuple[str, ...]:
        names = ("weight_absmax", "weight_quant_map", "weight_quant_state")
        return names + (("weight_nested_absmax", "weight_nested_quant_map") if self.config.double_quant else ())

    def create_weights(self, layer: nn.Module, input_size_per_partition: int, output_partition_sizes: list[int],
                       input_size: int, output_size: int, params_dtype: torch.dtype,
                       weight_loader: WeightLoader) -> None:
        prefix = getattr(layer, "prefix", "")
        k, n = input_size_per_partition, sum(output_partition_sizes)
        if self.config.online:
            if k % ONLINE_BLOCKSIZE:
                raise QuantizationError(f"{prefix}: in-flight bitsandbytes quantizes blocks of {ONLINE_BLOCKSIZE} "
                                        f"inputs along each row; this layer's input width per rank is {k}")
            layer.register_parameter("weight", new_param((n, k), params_dtype, output_dim=0, input_dim=1,
                                                         weight_loader=weight_loader))
            return
        if k % 2 or input_size % 2:
            raise QuantizationError(f"{prefix}: bitsandbytes 4-bit layers need an even input width per rank, got {k}")
        layer.bnb_input_size = input_size
        layer.bnb_act_dtype = params_dtype
        layer.bnb_parts = {}  # shard id -> the part's raw quant-state tensors, until loaded

        def load_packed(param: torch.Tensor, loaded: torch.Tensor, shard_id=None) -> None:
            flat = loaded.reshape(-1)
            if flat.dtype != torch.uint8:  # bnb_4bit_quant_storage: the same bytes in another dtype
                flat = flat.contiguous().view(torch.uint8)
            if flat.numel() % (input_size // 2):
                raise QuantizationError(f"{prefix}: a packed 4-bit weight of {flat.numel()} bytes is not whole rows "
                                        f"of {input_size} inputs")
            layer.bnb_parts.setdefault(shard_id, {})["packed_rows"] = flat.numel() // (input_size // 2)
            weight_loader(param, flat.view(-1, input_size // 2), shard_id)

        layer.register_parameter("weight", new_param((n, k // 2), torch.uint8, output_dim=0, input_dim=1,
                                                     weight_loader=load_packed))
        for name in self._aux_names():
            def stash(param: torch.Tensor, loaded: torch.Tensor, shard_id=None, name=name) -> None:
                layer.bnb_parts.setdefault(shard_id, {})[name] = loaded
            # A placeholder: the part's tensors are kept aside and combined after loading.
            layer.register_parameter(name, new_param((0,), torch.float32, weight_loader=stash))
        layer.bnb_weight_loader = weight_loader
        layer.bnb_local_shape = (n, k)

    def _part_absmax(self, layer: nn.Module, shard_id: Any, part: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """One checkpoint tensor's absmax, float32 [rows, K / blocksize], and its blocksize."""
        prefix, cfg = getattr(layer, "prefix", ""), self.config
        where = prefix if shard_id is None else f"{prefix} (part {shard_id})"
        missing = [n for n in ("packed_rows",) + self._aux_names() if n not in part]
        if missing:
            raise QuantizationError(f"{where}: the checkpoint lacks {missing} for a bitsandbytes 4-bit weight "
                                    f"(double quantization {'on' if cfg.double_quant else 'off'} per config.json)")
        state = parse_quant_state(part["weight_quant_state"])
        if state.get("quant_type") != cfg.quant_type:
            raise QuantizationError(f"{where}: quant_state says {state.get('quant_type')!r}, config.json says "
                                    f"{cfg.quant_type!r}")
        blocksize, k = int(state.get("blocksize", 64)), layer.bnb_input_size
        rows = part["packed_rows"]
        shape = [int(s) for s in state.get("shape") or ()]
        if shape != [rows, k]:
            raise QuantizationError(f"{where}: quant_state shape {shape} does not match the layer's [{rows}, {k}]")
        k_local = layer.bnb_local_shape[1]
        if blocksize <= 0 or k % blocksize or k_local % blocksize:
            raise QuantizationError(f"{where}: bitsandbytes blocks of {blocksize} run along the flattened weight; "
                                    f"pagedlm needs them inside rows, so the input width ({k}) and each rank's "
                                    f"({k_local}) must be multiples of {blocksize}")
        table = torch.tensor(TABLES[cfg.quant_type])
        qmap = part["weight_quant_map"].float().reshape(-1).cpu()
        if qmap.numel() != 16 or not torch.allclose(qmap, table, atol=1e-6):
            raise QuantizationError(f"{where}: quant_map is not bitsandbytes' {cfg.quant_type} table")
        absmax = part["weight_absmax"]
        nested = "nested_offset" in state
        if nested != cfg.double_quant:
            raise QuantizationError(f"{where}: quant_state {'has' if nested else 'lacks'} double quantization, "
                                    f"config.json bnb_4bit_use_double_quant is {cfg.double_quant}")
        if nested:
            if absmax.dtype != torch.uint8:
                raise QuantizationError(f"{where}: double-quantized absmax should be uint8 codes, got {absmax.dtype}")
            absmax = dequantize_nested_absmax(absmax, part["weight_nested_absmax"], part["weight_nested_quant_map"],
                                              int(state.get("nested_blocksize", 256)), float(state["nested_offset"]))
        absmax = absmax.float().reshape(-1)
        if absmax.numel() != rows * k // blocksize:
            raise QuantizationError(f"{where}: {absmax.numel()} absmax values for {rows * k // blocksize} blocks")
        return absmax.view(rows, k // blocksize), blocksize

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if self.config.online:
            packed, absmax = quantize_4bit_rows(layer.weight.data, torch.tensor(TABLES[self.config.quant_type]))
            replace_param(layer, "weight", packed)
            replace_param(layer, "bnb_absmax", absmax)
            replace_param(layer, "bnb_table", byte_table(torch.tensor(TABLES[self.config.quant_type])).to(
                packed.device))
            return
        parts, n, k_local = layer.bnb_parts, *layer.bnb_local_shape
        for name in self._aux_names():
            delattr(layer, name)
        if parts:  # a checkpoint (dummy weights set bnb_absmax themselves)
            blocksizes = set()
            absmax_local = None
            for shard_id, part in parts.items():
                absmax, blocksize = self._part_absmax(layer, shard_id, part)
                blocksizes.add(blocksize)
                if len(blocksizes) > 1:
                    raise QuantizationError(f"{getattr(layer, 'prefix', '')}: fused parts quantized with different "
                                            f"blocksizes {sorted(blocksizes)}")
                if absmax_local is None:
                    absmax_local = torch.empty((n, k_local // blocksize), dtype=torch.float32,
                                               device=layer.weight.device)
                    set_weight_attrs(absmax_local, {"output_dim": 0, "input_dim": 1})
                # The layer's loader places (and for tensor parallelism narrows) it like the codes.
                layer.bnb_weight_loader(absmax_local, absmax.to(absmax_local.device), shard_id)
            replace_param(layer, "bnb_absmax", absmax_local)
        layer.bnb_parts = {}
        replace_param(layer, "bnb_table", byte_table(torch.tensor(TABLES[self.config.quant_type])).to(
            layer.weight.device))

    def dequantized_weight(self, layer: nn.Module) -> torch.Tensor:
        return dequantize_4bit(layer.weight, layer.bnb_absmax, layer.bnb_table, torch.float32)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.is_cuda:  # the 4-bit kernels where they win, else the GPU's dequantize + GEMM
            # bnb_table[:16, 1]: the 16 code values (the low nibble's column of bytes 0-15)
            y = bnb_linear(x.reshape(-1, x.shape[-1]), layer.weight, layer.bnb_absmax, layer.bnb_table[:16, 1], bias)
            return y.reshape(*x.shape[:-1], y.shape[-1])
        weight = dequantize_4bit(layer.weight, layer.bnb_absmax, layer.bnb_table, x.dtype)
        return F.linear(x, weight, bias)

    def init_dummy(self, layer: nn.Module, generator: torch.Generator) -> None:
        if self.config.online:  # float weights, quantized after loading
            return QuantMethod.init_dummy(self, layer, generator)
        n, k_local = layer.bnb_local_shape
        device = generator.device
        layer.weight.data.copy_(torch.randint(0, 256, layer.weight.shape, generator=generator, device=device,
                                              dtype=torch.int32).to(torch.uint8))
        blocks = max(1, k_local // 64) if k_local % 64 == 0 else 1
        absmax = 0.02 + 0.06 * torch.rand((n, blocks), generator=generator, device=device)
        replace_param(layer, "bnb_absmax", absmax)
        layer.bnb_parts = {}
