"""bitsandbytes 4-bit checkpoints written by a reference quantizer, and their dequantized oracle.

The quantizer and dequantizer are transcribed from bitsandbytes' published PyTorch code (the
default backend, ``bitsandbytes/backends/default/ops.py``: ``quantize_4bit``,
``_dequantize_4bit_impl``, ``quantize_blockwise``, ``dequantize_blockwise``; and
``functional.py``: ``get_4bit_type``, ``create_dynamic_map``, ``quantize_4bit``'s
``compress_statistics`` branch and ``QuantState.as_dict(packed=True)``), independently of
pagedlm's loader:

- a weight is flattened row-major and cut into blocks of 64; absmax = max |x| per block;
  code = argmin |x / absmax - table| over the 16-entry NF4 or FP4 table;
- two codes per byte, the first element in the high nibble: ``q[::2] << 4 | q[1::2]``, saved
  as uint8 [n / 2, 1];
- double quantization: offset = absmax.mean(); absmax - offset is quantized blockwise (256)
  to uint8 codes of the signed dynamic map, with a float32 absmax per 256 block;
- tensors saved beside each weight as ``weight.absmax``, ``weight.quant_map``,
  ``weight.nested_absmax``, ``weight.nested_quant_map`` and
  ``weight.quant_state.bitsandbytes__<type>`` (the JSON of the non-tensor fields, as uint8).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0]
_FP4_RAW = [0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]


def get_4bit_type(typename: str) -> torch.Tensor:
    if typename == "nf4":
        return torch.tensor(NF4)
    data = torch.tensor(_FP4_RAW)
    return data / data.abs().max()


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> torch.Tensor:
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    if additional_items > 0:
        boundaries = torch.linspace(0.1, 1, additional_items + 1)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    assert len(data) == 2 ** total_bits
    data.sort()
    return torch.tensor(data)


def quantize_blockwise(a: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The default backend's quantize_blockwise (8-bit codes of ``code``)."""
    n = a.numel()
    rem = n % blocksize
    has_rem = rem > 0
    blocks = n // blocksize + has_rem
    absmax = torch.zeros((blocks,), dtype=torch.float32)
    flat = a.reshape(n)
    full = flat[: n - rem].reshape(n // blocksize, blocksize)
    absmax[: blocks - has_rem] = full.abs().max(dim=-1)[0]
    scaled = torch.clamp(full * (1 / absmax[: blocks - has_rem].view(-1, 1)), -1, 1).reshape(-1)
    if has_rem:
        absmax[-1] = flat[n - rem:].abs().max()
        scaled = torch.cat([scaled, torch.clamp(flat[n - rem:] * (1 / absmax[-1]), -1, 1)])
    out = torch.argmin((scaled.unsqueeze(-1) - code).abs(), dim=-1).to(torch.uint8).reshape(a.shape)
    return out, absmax


def dequantize_blockwise(a: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int) -> torch.Tensor:
    out = code[a.reshape(-1).int()]
    blocks = out.shape[-1] // blocksize
    res = out.shape[-1] % blocksize
    if res:
        out = torch.nn.functional.pad(out, (0, blocksize - res), value=0)
    out = (out.view(-1, blocksize) * absmax.view(-1, 1)).reshape(-1)
    return out[: blocks * blocksize + res].reshape(a.shape)


def quantize_4bit(a: torch.Tensor, quant_type: str, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The default backend's quantize_4bit: (packed uint8 [ceil(n/2), 1], absmax float32)."""
    n = a.numel()
    full_blocks, rem = n // blocksize, n % blocksize
    blocks = full_blocks + 1 if rem else full_blocks
    absmax = torch.zeros((blocks,), dtype=torch.float32)
    flat = a.reshape(n).float()
    a_full = flat[: n - rem].reshape(n // blocksize, blocksize)
    absmax[:full_blocks] = a_full.abs().max(dim=-1)[0]
    scaled = torch.clamp(a_full * (1 / absmax[:full_blocks].view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        a_rem = flat[-rem:]
        absmax[-1] = a_rem.abs().max()
        scaled = torch.cat([scaled, torch.clamp(a_rem * (1 / absmax[-1]), -1, 1)])
    code = get_4bit_type(quant_type)
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1), value=0.0)
    quantized = torch.argmin((scaled.view(-1, 1) - code).abs(), dim=-1, keepdim=True).to(torch.uint8)
    packed = quantized[::2] << 4 | quantized[1::2]
    return packed, absmax


def dequantize_4bit(packed: torch.Tensor, absmax: torch.Tensor, quant_type: str, shape, blocksize: int = 64):
    """The default backend's _dequantize_4bit_impl, in float32."""
    a = packed.view(torch.uint8).reshape(-1)
    out_dq = torch.empty(a.size(0) * 2, dtype=torch.int32)
    out_dq[1::2] = a & 0xF
    out_dq[::2] = a >> 4
    out_dq = get_4bit_type(quant_type)[out_dq]
    n = 1
    for s in shape:
        n *= s
    out_dq = out_dq[:n]
    rem = n % blocksize
    if rem:
        out = torch.empty(n)
        out[: n - rem] = (out_dq[: n - rem].view(-1, blocksize) * absmax[:-1].view(-1, 1)).reshape(-1)
        out[n - rem:] = out_dq[n - rem:] * absmax[-1]
    else:
        out = (out_dq.view(-1, blocksize) * absmax.view(-1, 1)).reshape(-1)
    return out.reshape(*shape)


def pack_dict_to_tensor(source: dict) -> torch.Tensor:
    return torch.tensor(list(json.dumps(source).encode("utf-8")), dtype=torch.uint8)


def quantize_weight(w: torch.Tensor, quant_type: str, double_quant: bool, blocksize: int = 64,
                    quant_storage: torch.dtype = torch.uint8) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(the checkpoint tensors of one weight, named after ``weight``; its dequantized float32 value)."""
    packed, absmax = quantize_4bit(w, quant_type, blocksize)
    state = {"quant_type": quant_type, "blocksize": blocksize, "dtype": str(w.dtype).removeprefix("torch."),
             "shape": list(w.shape)}
    tensors = {"weight.quant_map": get_4bit_type(quant_type)}
    if double_quant:
        offset = absmax.mean()
        code = create_dynamic_map()
        qabsmax, absmax2 = quantize_blockwise(absmax - offset, code, 256)
        tensors.update({"weight.absmax": qabsmax, "weight.nested_absmax": absmax2,
                        "weight.nested_quant_map": code.clone()})
        state.update({"nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": offset.item()})
        # bitsandbytes' gemm_4bit: dequantize_blockwise(absmax codes, state2) + offset.
        absmax_used = dequantize_blockwise(qabsmax, absmax2, code, 256) + offset.item()
    else:
        tensors["weight.absmax"] = absmax
        absmax_used = absmax
    stored = packed if quant_storage == torch.uint8 else packed.squeeze().view(quant_storage).unsqueeze(1)
    tensors["weight"] = stored
    tensors[f"weight.quant_state.bitsandbytes__{quant_type}"] = pack_dict_to_tensor(state)
    return tensors, dequantize_4bit(packed, absmax_used, quant_type, w.shape, blocksize)


def quant_config(quant_type: str, double_quant: bool, skip: list[str] | None = None,
                 quant_storage: str = "uint8") -> dict:
    """config.json's quantization_config as transformers' BitsAndBytesConfig.to_dict() writes it."""
    return {"_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_quant_storage": quant_storage, "bnb_4bit_quant_type": quant_type,
            "bnb_4bit_use_double_quant": double_quant, "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False, "llm_int8_skip_modules": skip, "llm_int8_threshold": 6.0,
            "load_in_4bit": True, "load_in_8bit": False, "quant_method": "bitsandbytes"}


def _skipped(module: str, skip: list[str] | None) -> bool:
    import re

    return any(re.match(rf"(?:{k})(?:(?<=\.)|(?=\.|$))", module) or module.endswith(k) for k in (skip or []))


def write_bnb_checkpoint(src: str, out: Path, oracle: Path, quant_type: str, double_quant: bool,
                         skip: list[str] | None = None, quant_storage: torch.dtype = torch.uint8,
                         config_overrides: dict | None = None) -> None:
    """``out``: ``src`` quantized in bitsandbytes' 4-bit format (linear layers except lm_head and
    ``skip``); ``oracle``: the same model with those weights dequantized, float32, unquantized."""
    from tests.models.quant_helpers import read_for_quantizing, write_quantized_pair  # noqa: PLC0415

    tensors = read_for_quantizing(src, out, oracle)
    quant, dequant = {}, {}
    for name, t in tensors.items():
        module = name.removesuffix(".weight")
        if not (name.endswith(".weight") and module.rsplit(".", 1)[-1] in LINEARS) or _skipped(module, skip):
            quant[name] = dequant[name] = t
            continue
        parts, w = quantize_weight(t, quant_type, double_quant, quant_storage=quant_storage)
        quant.update({f"{module}.{k}": v for k, v in parts.items()})
        dequant[name] = w  # float32
    storage = str(quant_storage).removeprefix("torch.")
    write_quantized_pair(out, oracle, quant, dequant, {**quant_config(quant_type, double_quant, skip, storage),
                                                       **(config_overrides or {})})
