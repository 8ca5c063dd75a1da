"""AWQ / GPTQ checkpoints written the way the quantizers write them, for the tests.

The quantizers and packers below are ports of the published reference code, kept close to
the originals (loops included) so that the tests check pagedlm's unpacking against the
quantizers' conventions rather than against pagedlm's own packer:

- AutoAWQ (casper-hansen/AutoAWQ): ``awq/quantize/quantizer.py:pseudo_quantize_tensor``
  (zero-point RTN per group), ``awq/modules/linear/gemm.py:WQLinear_GEMM.from_linear`` (the
  GEMM packer, order map [0, 2, 4, 6, 1, 3, 5, 7]) and ``awq/utils/packing_utils.py``
  (``unpack_awq`` / ``reverse_awq_order`` / ``dequantize_gemm``, the torch dequantizer).
- AutoGPTQ (AutoGPTQ/AutoGPTQ): ``auto_gptq/quantization/quantizer.py:Quantizer.find_params``
  (sym / asym RTN), ``auto_gptq/nn_modules/qlinear/qlinear_cuda.py:QuantLinear.pack`` (codes
  along the input, zeros stored minus one) and its torch ``forward`` dequantizer.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch

LINEAR_SUFFIXES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                   "qkv_proj", "gate_up_proj",  # fused in Phi-3's and GLM's checkpoints
                   "c_fc", "c_proj", "c_attn", "dense", "fc1", "fc2",  # StarCoder 1 / 2, Phi-1/2
                   "out_proj", "fc_in", "fc_out",  # GPT-J
                   "query_key_value", "dense_h_to_4h", "dense_4h_to_h",  # GPT-NeoX
                   "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",  # DeepSeek's latent attention
                   "input_linear", "output_linear",  # GraniteMoE's shared MLP (not its 3-D experts)
                   "w1", "w2", "w3")  # Mixtral's experts


# --------------------------------------------------------------------------- AutoAWQ


def awq_pseudo_quantize(w: torch.Tensor, group_size: int, w_bit: int = 4):
    """AutoAWQ's pseudo_quantize_tensor (zero_point=True): (fake-quantized w, scales, zeros),
    scales / zeros [out, G]."""
    org_w_shape = w.shape
    w = w.reshape(-1, group_size)
    max_val = w.amax(dim=1, keepdim=True)
    min_val = w.amin(dim=1, keepdim=True)
    max_int = 2**w_bit - 1
    min_int = 0
    scales = (max_val - min_val).clamp(min=1e-5) / max_int
    zeros = (-torch.round(min_val / scales)).clamp_(min_int, max_int)
    w = (torch.clamp(torch.round(w / scales) + zeros, min_int, max_int) - zeros) * scales
    w = w.reshape(org_w_shape)
    return w, scales.view(org_w_shape[0], -1), zeros.view(org_w_shape[0], -1)


def awq_pack_gemm(weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int,
                  w_bit: int = 4) -> dict[str, torch.Tensor]:
    """WQLinear_GEMM.from_linear: ``weight`` [out, in] (fake-quantized), scales / zeros
    [G, out] (the quantizer transposes them before calling it)."""
    in_features = weight.shape[1]
    scale_zeros = zeros * scales
    scales_half = scales.clone().half()
    pack_num = 32 // w_bit
    intweight = []
    for idx in range(in_features):
        intweight.append(torch.round((weight[:, idx] + scale_zeros[idx // group_size])
                                     / scales_half[idx // group_size]).to(torch.int)[:, None])
    intweight = torch.cat(intweight, dim=1).t().contiguous().to(torch.int32)
    qweight = torch.zeros((intweight.shape[0], intweight.shape[1] // 32 * w_bit), dtype=torch.int32)
    order_map = [0, 2, 4, 6, 1, 3, 5, 7]
    for col in range(intweight.shape[1] // pack_num):
        for i in range(pack_num):
            qweight[:, col] |= intweight[:, col * pack_num + order_map[i]] << (i * w_bit)
    zeros = zeros.to(dtype=torch.int32)
    qzeros = torch.zeros((zeros.shape[0], zeros.shape[1] // 32 * w_bit), dtype=torch.int32)
    for col in range(zeros.shape[1] // pack_num):
        for i in range(pack_num):
            qzeros[:, col] |= zeros[:, col * pack_num + order_map[i]] << (i * w_bit)
    return {"qweight": qweight, "qzeros": qzeros, "scales": scales_half}


def awq_dequantize_gemm(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, bits: int,
                        group_size: int) -> torch.Tensor:
    """packing_utils.dequantize_gemm: the dense [in, out] weight (scales' dtype)."""
    shifts = torch.arange(0, 32, bits)
    iweights = torch.bitwise_right_shift(qweight[:, :, None], shifts[None, None, :]).to(torch.int8)
    iweights = iweights.view(iweights.shape[0], -1)
    izeros = torch.bitwise_right_shift(qzeros[:, :, None], shifts[None, None, :]).to(torch.int8)
    izeros = izeros.view(izeros.shape[0], -1)
    reverse_order = torch.arange(izeros.shape[-1], dtype=torch.int32).view(-1, 32 // bits)
    reverse_order = reverse_order[:, [0, 4, 1, 5, 2, 6, 3, 7]].view(-1)
    izeros, iweights = izeros[:, reverse_order], iweights[:, reverse_order]
    iweights = torch.bitwise_and(iweights, (2**bits) - 1)
    izeros = torch.bitwise_and(izeros, (2**bits) - 1)
    scales = scales.repeat_interleave(group_size, dim=0)
    izeros = izeros.repeat_interleave(group_size, dim=0)
    return (iweights - izeros) * scales


def awq_quantize_linear(weight: torch.Tensor, group_size: int):
    """(checkpoint tensors, dense float32 [out, in] weight the checkpoint stands for)."""
    group = group_size if group_size != -1 else weight.shape[1]
    fake_w, scales, zeros = awq_pseudo_quantize(weight.float(), group)
    tensors = awq_pack_gemm(fake_w, scales.t().contiguous(), zeros.t().contiguous(), group)
    dense = awq_dequantize_gemm(tensors["qweight"], tensors["qzeros"], tensors["scales"].float(), 4, group)
    return tensors, dense.t().contiguous()


# --------------------------------------------------------------------------- AutoGPTQ


def gptq_find_params(x: torch.Tensor, bits: int, sym: bool):
    """Quantizer.find_params (per output row of one group, no mse search): scale, zero [rows]."""
    maxq = torch.tensor(2**bits - 1)
    tmp = torch.zeros(x.shape[0])
    xmin = torch.minimum(x.min(1)[0], tmp)
    xmax = torch.maximum(x.max(1)[0], tmp)
    if sym:
        xmax = torch.maximum(torch.abs(xmin), xmax)
        tmp = xmin < 0
        if torch.any(tmp):
            xmin[tmp] = -xmax[tmp]
    tmp = (xmin == 0) & (xmax == 0)
    xmin[tmp] = -1
    xmax[tmp] = +1
    scale = (xmax - xmin) / maxq
    zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-xmin / scale)
    return scale, zero


def gptq_rtn(weight: torch.Tensor, bits: int, group_size: int, sym: bool, g_idx: torch.Tensor):
    """Round-to-nearest GPTQ without the Hessian update: per group (the inputs g_idx assigns to
    it) the quantizer's scale / zero, then the fake-quantized weight. scales / zeros [out, G]."""
    maxq = 2**bits - 1
    num_groups = int(g_idx.max().item()) + 1
    scales = torch.zeros(weight.shape[0], num_groups)
    zeros = torch.zeros(weight.shape[0], num_groups)
    fake = torch.empty_like(weight)
    for g in range(num_groups):
        cols = (g_idx == g).nonzero().flatten()
        scale, zero = gptq_find_params(weight[:, cols], bits, sym)
        scales[:, g], zeros[:, g] = scale, zero
        q = torch.clamp(torch.round(weight[:, cols] / scale[:, None]) + zero[:, None], 0, maxq)
        fake[:, cols] = scale[:, None] * (q - zero[:, None])
    return fake, scales, zeros


def gptq_pack(weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor, bits: int,
              zeros_minus_one: bool = True) -> dict[str, torch.Tensor]:
    """QuantLinear.pack (qlinear_cuda): ``weight`` [out, in], scales / zeros [out, G]. AutoGPTQ
    stores ``zeros - 1`` (v1); GPTQModel's gptq_v2 stores the zeros (``zeros_minus_one=False``)."""
    infeatures = weight.shape[1]
    scales = scales.t().contiguous()
    zeros = zeros.t().contiguous()
    scale_zeros = zeros * scales
    scales_half = scales.clone().half()
    intweight = []
    for idx in range(infeatures):
        intweight.append(torch.round((weight[:, idx] + scale_zeros[g_idx[idx]])
                                     / scales_half[g_idx[idx]]).to(torch.int)[:, None])
    intweight = torch.cat(intweight, dim=1).t().contiguous().numpy().astype(np.uint32)
    i = row = 0
    qweight = np.zeros((intweight.shape[0] // 32 * bits, intweight.shape[1]), dtype=np.uint32)
    while row < qweight.shape[0]:
        for j in range(i, i + (32 // bits)):
            qweight[row] |= intweight[j] << (bits * (j - i))
        i += 32 // bits
        row += 1
    if zeros_minus_one:
        zeros = zeros - 1
    zeros = zeros.numpy().astype(np.uint32)
    qzeros = np.zeros((zeros.shape[0], zeros.shape[1] // 32 * bits), dtype=np.uint32)
    i = col = 0
    while col < qzeros.shape[1]:
        for j in range(i, i + (32 // bits)):
            qzeros[:, col] |= zeros[:, j] << (bits * (j - i))
        i += 32 // bits
        col += 1
    return {"qweight": torch.from_numpy(qweight.astype(np.int32)), "qzeros": torch.from_numpy(qzeros.astype(np.int32)),
            "scales": scales_half, "g_idx": g_idx.to(torch.int32)}


def gptq_dequantize(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor,
                    bits: int, zeros_plus_one: bool = True) -> torch.Tensor:
    """QuantLinear.forward's torch path: the dense [in, out] weight (scales' dtype)."""
    wf = torch.tensor(list(range(0, 32, bits)), dtype=torch.int32).unsqueeze(0)
    zeros = torch.bitwise_right_shift(torch.unsqueeze(qzeros, 2).expand(-1, -1, 32 // bits), wf.unsqueeze(0))
    zeros = torch.bitwise_and(zeros.to(torch.int16 if bits == 8 else torch.int8), (2**bits) - 1)
    if zeros_plus_one:
        zeros = zeros + 1
    zeros = zeros.reshape(scales.shape)
    weight = torch.bitwise_right_shift(torch.unsqueeze(qweight, 1).expand(-1, 32 // bits, -1), wf.unsqueeze(-1))
    weight = torch.bitwise_and(weight.to(torch.int16 if bits == 8 else torch.int8), (2**bits) - 1)
    weight = weight.reshape(weight.shape[0] * weight.shape[1], weight.shape[2])
    return scales[g_idx.long()] * (weight - zeros[g_idx.long()])


def act_order_g_idx(in_features: int, group_size: int, seed: int) -> torch.Tensor:
    """GPTQ with desc_act: inputs are quantized in a permuted order (by Hessian diagonal, here
    random) and ``g_idx[perm[i]] = i // group_size``, as AutoGPTQ's fasterquant returns it."""
    perm = torch.randperm(in_features, generator=torch.Generator().manual_seed(seed))
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[perm] = (torch.arange(in_features) // group_size).to(torch.int32)
    return g_idx


def gptq_quantize_linear(weight: torch.Tensor, bits: int, group_size: int, sym: bool, desc_act: bool,
                         v2: bool, seed: int):
    in_features = weight.shape[1]
    group = group_size if group_size != -1 else in_features
    g_idx = act_order_g_idx(in_features, group, seed) if desc_act else \
        (torch.arange(in_features) // group).to(torch.int32)
    fake, scales, zeros = gptq_rtn(weight.float(), bits, group, sym, g_idx)
    tensors = gptq_pack(fake, scales, zeros, g_idx, bits, zeros_minus_one=not v2)
    dense = gptq_dequantize(tensors["qweight"], tensors["qzeros"], tensors["scales"].float(), tensors["g_idx"], bits,
                            zeros_plus_one=not v2)
    return tensors, dense.t().contiguous()


# --------------------------------------------------------------------------- compressed-tensors


def ct_pack(unsigned: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """compressed-tensors' ``pack_to_int32``: unsigned values [R, C] (the signed codes plus
    2**(bits - 1)) packed ``32 // bits`` per int32 along ``dim``, field i of a word at bits
    ``bits * i`` (sequential), the dim padded with zeros to whole words."""
    pack = 32 // bits
    v = unsigned.to(torch.int64)
    if dim == 0:
        v = v.t()
    pad = -v.shape[1] % pack
    v = torch.nn.functional.pad(v, (0, pad)).reshape(v.shape[0], -1, pack)
    words = sum(v[:, :, i] << (bits * i) for i in range(pack))
    words = (words - ((words >> 31) & 1) * (1 << 32)).to(torch.int32)
    return words.t().contiguous() if dim == 0 else words


def ct_quantize_linear(weight: torch.Tensor, bits: int, group_size: int, sym: bool, actorder: bool, seed: int):
    """llm-compressor's round-to-nearest W{bits}A16 of a [N, K] weight: per (row, group) scales
    (symmetric: zero point 0; else min / max with a zero point), signed codes in
    [-2**(bits-1), 2**(bits-1) - 1], groups in act order when ``actorder``; the
    ``PackedQuantizationCompressor`` tensors and the dequantized weight (q - zp) * scale."""
    n, k = weight.shape
    group = group_size if group_size != -1 else k
    g_idx = act_order_g_idx(k, group, seed) if actorder else (torch.arange(k) // group).to(torch.int32)
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    w = weight.float()
    scale = torch.empty(n, k // group)
    zp = torch.zeros(n, k // group, dtype=torch.int64)
    for g in range(k // group):
        wg = w[:, g_idx == g]
        if sym:
            scale[:, g] = (wg.abs().amax(dim=1) * 2 / (qmax - qmin)).clamp(min=1e-8)
        else:
            lo, hi = wg.amin(dim=1).clamp(max=0), wg.amax(dim=1).clamp(min=0)
            scale[:, g] = ((hi - lo) / (qmax - qmin)).clamp(min=1e-8)
            zp[:, g] = torch.round(qmin - lo / scale[:, g]).clamp(qmin, qmax).to(torch.int64)
    cols = g_idx.long()
    q = (torch.round(w / scale[:, cols]) + zp[:, cols]).clamp(qmin, qmax).to(torch.int64)
    dense = (q - zp[:, cols]).float() * scale[:, cols]
    offset = 2 ** (bits - 1)
    tensors = {"weight_packed": ct_pack(q + offset, bits, 1), "weight_scale": scale,
               "weight_shape": torch.tensor([n, k], dtype=torch.int32)}
    if not sym:
        tensors["weight_zero_point"] = ct_pack(zp + offset, bits, 0)
    if actorder:
        tensors["weight_g_idx"] = g_idx
    return tensors, dense


# --------------------------------------------------------------------------- checkpoints


def quantize_checkpoint(float_dir: str | Path, out_dir: str | Path, ref_dir: str | Path, fmt: str,
                        **options) -> tuple[Path, Path]:
    """Write ``out_dir`` (the quantized checkpoint, every linear layer of the decoder in the
    format's tensors) and ``ref_dir`` (the same model with the dequantized float32 weights, for
    transformers) from the float checkpoint in ``float_dir``."""
    from safetensors.torch import load_file, save_file

    float_dir, out_dir, ref_dir = Path(float_dir), Path(out_dir), Path(ref_dir)
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(float_dir.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    quantized, dense = {}, {}
    for name, w in sorted(tensors.items()):
        layer = name.removesuffix(".weight")
        if not (name.endswith(".weight") and layer.split(".")[-1] in LINEAR_SUFFIXES and w.dim() == 2):
            quantized[name] = dense[name] = w
            continue
        q, deq = _quantize(w, fmt, _input_seed(layer), **options)
        quantized.update({f"{layer}.{k}": v for k, v in q.items()})
        dense[name] = deq
    for d, state in ((out_dir, quantized), (ref_dir, dense)):
        d.mkdir(parents=True, exist_ok=True)
        for f in float_dir.iterdir():
            if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
                shutil.copy(f, d / f.name)
        save_file({k: v.contiguous() for k, v in state.items()}, str(d / "model.safetensors"),
                  metadata={"format": "pt"})
    config = json.loads((out_dir / "config.json").read_text())
    config["quantization_config"] = _quant_config(fmt, **options)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir, ref_dir


def _input_seed(layer: str) -> int:
    """Layers that read the same input (q/k/v, gate/up) share GPTQ's Hessian and so its act
    order: one g_idx per input, as pagedlm's fused layers (and vLLM's) assume."""
    for part, shared in (("q_proj", "qkv"), ("k_proj", "qkv"), ("v_proj", "qkv"), ("gate_proj", "gate_up"),
                         ("up_proj", "gate_up")):
        layer = layer.replace(part, shared)
    return zlib.crc32(layer.encode())


def _quantize(w: torch.Tensor, fmt: str, seed: int, group_size: int = 32, bits: int = 4, sym: bool = True,
              desc_act: bool = False, checkpoint_format: str = "gptq"):
    if fmt == "awq":
        return awq_quantize_linear(w, group_size)
    if fmt == "compressed-tensors":
        return ct_quantize_linear(w, bits, group_size, sym, desc_act, seed)
    return gptq_quantize_linear(w, bits, group_size, sym, desc_act, checkpoint_format == "gptq_v2", seed)


def _quant_config(fmt: str, group_size: int = 32, bits: int = 4, sym: bool = True, desc_act: bool = False,
                  checkpoint_format: str = "gptq") -> dict:
    if fmt == "compressed-tensors":  # what llm-compressor writes for W4A16 / W8A16 (pack-quantized)
        weights = {"num_bits": bits, "type": "int", "symmetric": sym, "dynamic": False, "observer": "minmax",
                   "strategy": "group" if group_size != -1 else "channel",
                   "group_size": group_size if group_size != -1 else None,
                   "actorder": "group" if desc_act else None}
        return {"quant_method": "compressed-tensors", "format": "pack-quantized", "ignore": ["lm_head"],
                "quantization_status": "compressed", "config_groups": {"group_0": {
                    "targets": ["Linear"], "weights": weights, "input_activations": None,
                    "output_activations": None}}}
    if fmt == "awq":  # what AutoAWQ's save_quantized writes (transformers' AwqConfig)
        return {"quant_method": "awq", "bits": 4, "group_size": group_size, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": None}
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym,
            "damp_percent": 0.01, "true_sequential": True, "static_groups": False,
            "checkpoint_format": checkpoint_format, "model_file_base_name": None}
