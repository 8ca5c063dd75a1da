"""Quantized tiny checkpoints in each format's exact tensor names and dtypes, and their
transformers oracle: the dequantized weights in float32, with the activations fake-quantized
by forward pre-hooks exactly as the scheme says (per token, or the static per-tensor scale).

The quantizer here is written from the formats' definitions (AutoFP8 / llm-compressor):
weight = codes * scale, codes = round(weight / scale) in fp8 e4m3 (saturating at 448) or
int8 (symmetric, [-128, 127]); scale = amax / qmax per tensor or per output channel.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

FP8 = torch.float8_e4m3fn
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "w1", "w2", "w3",
           "qkv_proj", "gate_up_proj",  # fused in Phi-3's and GLM's checkpoints
           "c_fc", "c_proj", "c_attn", "dense", "fc1", "fc2",  # StarCoder 1 / 2, Phi-1/2
           "out_proj", "fc_in", "fc_out",  # GPT-J
           "query_key_value", "dense_h_to_4h", "dense_4h_to_h",  # GPT-NeoX
           "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",  # DeepSeek's multi-head latent attention
           "input_linear", "output_linear")  # GraniteMoE's shared MLP (its 3-D expert tensors are no linear layers)


@dataclass(frozen=True)
class Scheme:
    fmt: str  # "fp8" (HF/AutoFP8) or "compressed-tensors"
    dtype: torch.dtype  # FP8 or torch.int8
    per_channel: bool
    activations: str | None  # None, "token", "static"

    @property
    def qmax(self) -> float:
        return 448.0 if self.dtype == FP8 else 127.0


def to_codes(x: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = x.float() / scale
    if dtype == torch.int8:
        return y.round().clamp(-128, 127).to(torch.int8)
    return y.clamp(-448, 448).to(FP8)


def fake_quant_rows(x: torch.Tensor, scheme: Scheme, static_scale: float | None) -> torch.Tensor:
    """What the engine feeds its 8-bit GEMM, dequantized: per token (row) or one static scale."""
    if static_scale is not None:
        scale = torch.tensor(static_scale)
    else:
        scale = (x.abs().amax(dim=-1, keepdim=True).float() / scheme.qmax).clamp(min=1e-12)
    return to_codes(x, scale, scheme.dtype).float() * scale


def _quant_config(scheme: Scheme) -> dict:
    if scheme.fmt == "fp8":
        return {"quant_method": "fp8", "activation_scheme": "static" if scheme.activations == "static" else "dynamic"}
    kind = "float" if scheme.dtype == FP8 else "int"
    acts = None if scheme.activations is None else {
        "num_bits": 8, "type": kind, "symmetric": True, "dynamic": scheme.activations == "token",
        "strategy": "token" if scheme.activations == "token" else "tensor"}
    fmt = "float-quantized" if kind == "float" else ("int-quantized" if acts else "naive-quantized")
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "ignore": ["lm_head"], "config_groups": {"group_0": {
                "targets": ["Linear"], "input_activations": acts, "output_activations": None,
                "weights": {"num_bits": 8, "type": kind, "symmetric": True, "dynamic": False,
                            "strategy": "channel" if scheme.per_channel else "tensor"}}}}


def calibrate_input_amax(src: str, prompts: list[list[int]]) -> dict[str, float]:
    """Largest |input| each linear layer sees on the prompts (static activation scales)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    amax: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LINEARS:
            def hook(_m, args, name=name):
                amax[name] = max(amax.get(name, 0.0), args[0].abs().max().item())
            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        for p in prompts:
            model(torch.tensor([p]))
    # q/k/v (and gate/up) read the same input, so their scales agree.
    return amax


def read_for_quantizing(src: str, out: Path, oracle: Path) -> dict[str, torch.Tensor]:
    """Copy ``src``'s files but its weights into ``out`` and ``oracle``; return its tensors."""
    from safetensors.torch import load_file

    for d in (out, oracle):
        shutil.copytree(src, d)
        for f in d.glob("*.safetensors*"):
            f.unlink()
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(Path(src).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def write_quantized_pair(out: Path, oracle: Path, quant: dict, dequant: dict, quantization_config: dict) -> None:
    """Save the quantized tensors with ``quantization_config`` in ``out``'s config.json, and the
    dequantized float weights in ``oracle``."""
    from safetensors.torch import save_file

    save_file(quant, str(out / "model.safetensors"))
    save_file(dequant, str(oracle / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config))


def quantize_linears(tensors: dict[str, torch.Tensor], quantize) -> tuple[dict, dict]:
    """Every linear weight through ``quantize(module, weight)`` -> (its checkpoint tensors by
    suffix, its dequantized float32 weight); other tensors as they are, in both."""
    quant, dequant = {}, {}
    for name, t in tensors.items():
        module = name.removesuffix(".weight")
        if not (name.endswith(".weight") and module.rsplit(".", 1)[-1] in LINEARS and t.dim() == 2):
            quant[name] = dequant[name] = t
            continue
        parts, dequant[name] = quantize(module, t)
        quant.update({f"{module}.{suffix}": v for suffix, v in parts.items()})
    return quant, dequant


def write_quantized(src: str, out: Path, oracle: Path, scheme: Scheme, prompts: list[list[int]]) -> dict[str, float]:
    """``out``: the checkpoint in ``scheme``'s format; ``oracle``: its dequantized float32
    copy. Returns the static input scales by module name (empty unless static)."""
    tensors = read_for_quantizing(src, out, oracle)
    input_scales = {k: v / scheme.qmax for k, v in calibrate_input_amax(src, prompts).items()} \
        if scheme.activations == "static" else {}

    def quantize(module: str, t: torch.Tensor):
        amax = t.abs().amax(dim=1, keepdim=True) if scheme.per_channel else t.abs().amax()
        scale = (amax.float() / scheme.qmax).clamp(min=1e-12)
        codes = to_codes(t, scale, scheme.dtype)
        parts = {"weight": codes, "weight_scale": scale}
        if module in input_scales:
            parts["input_scale"] = torch.tensor(input_scales[module], dtype=torch.float32)
        return parts, codes.float() * scale

    write_quantized_pair(out, oracle, *quantize_linears(tensors, quantize), _quant_config(scheme))
    return input_scales


def write_block_fp8(src: str, out: Path, oracle: Path, block: tuple[int, int]) -> None:
    """``out``: the checkpoint with every linear weight in block-wise fp8 (``weight`` e4m3 codes,
    ``weight_scale_inv`` float32 [ceil(out / bn), ceil(in / bk)], scale = the block's amax / 448;
    a partial last block where a width is not whole blocks), as Qwen's and DeepSeek's fp8
    releases store it; ``oracle``: the dequantized float32 weights."""
    bn, bk = block

    def quantize(module: str, t: torch.Tensor):
        n, k = t.shape
        rows, cols = -(-n // bn), -(-k // bk)
        padded = torch.nn.functional.pad(t.float(), (0, cols * bk - k, 0, rows * bn - n))  # zeros: no amax change
        blocks = padded.reshape(rows, bn, cols, bk)
        scale = (blocks.abs().amax(dim=(1, 3)) / 448.0).clamp(min=1e-12)
        codes = (blocks / scale[:, None, :, None]).clamp(-448.0, 448.0).to(FP8).reshape(rows * bn, cols * bk)[:n, :k]
        full = scale.repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
        return {"weight": codes.contiguous(), "weight_scale_inv": scale}, codes.float() * full

    quant, dequant = quantize_linears(read_for_quantizing(src, out, oracle), quantize)
    write_quantized_pair(out, oracle, quant, dequant, {"quant_method": "fp8", "activation_scheme": "dynamic",
                                                       "fmt": "e4m3", "weight_block_size": list(block)})


def add_fake_quant_hooks(model: torch.nn.Module, scheme: Scheme, input_scales: dict[str, float],
                         clamp: float | None = None) -> None:
    """Every linear layer's input fake-quantized as the scheme's activations are (``clamp``: to
    +-clamp first, fbgemm_fp8's activation upper bound)."""
    if scheme.activations is None:
        return
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in LINEARS:
            static = input_scales.get(name) if scheme.activations == "static" else None

            def hook(_m, args, static=static):
                x = args[0] if clamp is None else args[0].clamp(-clamp, clamp)
                return (fake_quant_rows(x, scheme, static),)
            module.register_forward_pre_hook(hook)
