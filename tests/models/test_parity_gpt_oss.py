"""gpt-oss (``GptOssForCausalLM``): greedy token ids and logprobs equal transformers (float32,
CPU) on a tiny random checkpoint, plainly and with chunked prefill over 4-token blocks.

The config makes every gpt-oss piece count: an 8-token sliding window on layer 0 (the 41- and
70-token prompts run far past it) and full attention on layer 1, attention sinks rewritten
to N(0, 1.5) (the random init's 0.1 would barely move the softmax), a SwiGLU limit of 1.0 so
the clamps bite, a router bias, YaRN RoPE, top-2 of 4 experts with biases.

Then the MXFP4 path: the same kind of checkpoint with its experts written as OpenAI's release
stores them (``*_blocks`` / ``*_scales``, quant_method mxfp4) by a reference quantizer written
here from the OCP MX format, against transformers on the dequantized weights (dequantized by
transformers' own ``convert_moe_packed_tensors``, not pagedlm's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from models.arch_parity_helpers import check_plain_and_chunked

CONFIG = dict(
    num_local_experts=4, num_experts_per_tok=2, intermediate_size=32, head_dim=16, sliding_window=8,
    swiglu_limit=1.0, max_position_embeddings=512,
    rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0, "beta_fast": 32.0,
                     "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 128},
)


def _build(path: Path, seed: int) -> Path:
    from safetensors.torch import load_file, save_file

    from pagedlm.demo import build_tiny_checkpoint

    build_tiny_checkpoint(path, "GptOssForCausalLM", seed=seed, **CONFIG)
    tensors = load_file(str(path / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    for name in tensors:
        if name.endswith(".self_attn.sinks"):
            tensors[name] = torch.randn(tensors[name].shape, generator=gen) * 1.5
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def _hf_reads_swiglu_config() -> bool:
    """Whether transformers' gpt-oss takes the SwiGLU clamp and alpha from the config (5.2x);
    earlier releases (5.17 on the GPU image) hard-code limit 7.0 and alpha 1.702, so they are
    no oracle for this config's limit of 1.0, which pagedlm reads as vLLM does."""
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    config = GptOssConfig(hidden_size=8, intermediate_size=8, num_local_experts=2, swiglu_limit=1.0)
    return GptOssExperts(config).limit == 1.0


needs_hf_swiglu_config = pytest.mark.skipif(
    not _hf_reads_swiglu_config(), reason="this transformers hard-codes gpt-oss's SwiGLU limit (7.0)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return str(_build(tmp_path_factory.mktemp("gpt_oss"), seed=600))


def test_config_exercises_windows_and_sinks(checkpoint):
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    assert config["layer_types"] == ["sliding_attention", "full_attention"] and config["sliding_window"] == 8


@needs_hf_swiglu_config
def test_parity(checkpoint):
    check_plain_and_chunked(checkpoint)


# ---------------------------------------------------------------- MXFP4

_E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def quantize_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference MXFP4 quantizer (OCP Microscaling spec): w [..., K] (K a multiple of 32) ->
    blocks uint8 [..., K / 32, 16], scales uint8 [..., K / 32]. Each 32-element block shares the
    scale 2^(floor(log2(amax)) - 2) (2 = e2m1's largest exponent: 6 = 1.5 * 2^2), stored as
    e8m0 (exponent + 127); each element is the nearest e2m1 value of w / scale (saturating at
    +-6), a sign bit (8) over a 3-bit magnitude index; element 2j in the low nibble of byte j."""
    blocks = w.float().reshape(*w.shape[:-1], w.shape[-1] // 32, 32)
    amax = blocks.abs().amax(dim=-1)
    exponent = torch.where(amax > 0, torch.floor(torch.log2(amax.clamp_min(1e-30))) - 2, torch.full_like(amax, -127))
    exponent = exponent.clamp(-127, 127)
    scaled = blocks / torch.exp2(exponent).unsqueeze(-1)
    index = (scaled.abs().clamp(max=6.0).unsqueeze(-1) - _E2M1).abs().argmin(dim=-1)  # nearest magnitude
    codes = (index | ((scaled < 0).long() << 3)).to(torch.uint8)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed, (exponent + 127).to(torch.uint8)


def test_dequantize_matches_transformers():
    """pagedlm's dequantizer against transformers' on random bytes (every code, both nibbles,
    a spread of exponents); and the reference quantizer round-trips values MXFP4 can hold."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from pagedlm.layers.quantization.mxfp4 import dequantize_mxfp4

    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 8, 4, 16), generator=gen, dtype=torch.uint8)
    scales = torch.randint(118, 136, (3, 8, 4), generator=gen, dtype=torch.uint8)
    ours = dequantize_mxfp4(blocks, scales, torch.float32)  # [E, out, in]
    theirs = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)  # [E, in, out]
    assert torch.equal(ours, theirs.transpose(1, 2))
    assert dequantize_mxfp4(blocks, scales, torch.bfloat16).dtype == torch.bfloat16
    # Codes 0..15 with the low nibble first.
    one_block = torch.tensor([[0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE] * 2], dtype=torch.uint8)
    values = dequantize_mxfp4(one_block, torch.tensor([127], dtype=torch.uint8), torch.float32)
    assert values[:16].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0,
                                    -4.0, -6.0]
    # Blocks of e2m1 values times one power of two each, led by +-6 (the max that sets the scale).
    codes = _E2M1[torch.randint(0, 8, (5, 2, 32), generator=gen)]
    codes[..., 0] = 6.0
    signs = torch.where(torch.rand(5, 2, 32, generator=gen) < 0.5, -1.0, 1.0)
    exact = (codes * signs * torch.exp2(torch.randint(-4, 4, (5, 2, 1), generator=gen).float())).reshape(5, 64)
    packed, exps = quantize_mxfp4(exact)
    assert torch.equal(dequantize_mxfp4(packed, exps, torch.float32), exact)


def _write_mxfp4(src: Path, quant_dir: Path, ref_dir: Path) -> None:
    """From the float32 checkpoint at ``src``: ``quant_dir`` with MXFP4 experts (what pagedlm
    loads) and ``ref_dir`` with those experts dequantized by transformers (its reference)."""
    from safetensors.torch import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    tensors = load_file(str(src / "model.safetensors"))
    quantized, dequantized = {}, {}
    for name, tensor in tensors.items():
        if name.endswith((".experts.gate_up_proj", ".experts.down_proj")):
            blocks, scales = quantize_mxfp4(tensor.transpose(1, 2))  # [E, in, out] -> [E, out, in]
            quantized[f"{name}_blocks"], quantized[f"{name}_scales"] = blocks, scales
            dequantized[name] = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32).contiguous()
            assert (dequantized[name] - tensor).abs().max() > 0  # the format rounds these weights
        else:
            quantized[name] = dequantized[name] = tensor
    for out, weights in ((quant_dir, quantized), (ref_dir, dequantized)):
        shutil.copytree(src, out, dirs_exist_ok=True)
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]}
    (quant_dir / "config.json").write_text(json.dumps(config, indent=2))


@needs_hf_swiglu_config
def test_mxfp4_checkpoint_matches_transformers_on_dequantized_weights(tmp_path):
    src = _build(tmp_path / "float", seed=601)
    quant_dir, ref_dir = tmp_path / "mxfp4", tmp_path / "dequantized"
    _write_mxfp4(src, quant_dir, ref_dir)
    from models.test_parity import PROMPTS, check_close, hf_reference, run

    ref = hf_reference(str(ref_dir), PROMPTS, 10)
    _, outputs = run(str(quant_dir), PROMPTS, max_model_len=128, enable_prefix_caching=False)
    check_close(ref, outputs, PROMPTS)


def test_bf16_and_mxfp4_experts_load_the_same(checkpoint, tmp_path):
    """Loading is format-agnostic: the float checkpoint's experts and an MXFP4 copy whose codes
    hold them exactly (weights rounded to MXFP4 first) fill the same parameters."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from pagedlm.layers.quantization.mxfp4 import Mxfp4Config, dequantize_mxfp4
    from pagedlm.models.gpt_oss import GptOssForCausalLM

    config = AutoConfig.from_pretrained(checkpoint)
    tensors = load_file(f"{checkpoint}/model.safetensors")
    plain, packed = {}, {}
    for name, tensor in tensors.items():
        if name.endswith((".experts.gate_up_proj", ".experts.down_proj")):
            blocks, scales = quantize_mxfp4(tensor.transpose(1, 2))
            plain[name] = dequantize_mxfp4(blocks, scales, torch.float32).transpose(1, 2)
            packed[f"{name}_scales"], packed[f"{name}_blocks"] = scales, blocks  # scales first: order-free
        else:
            plain[name] = packed[name] = tensor
    with torch.device("cpu"):
        a, b = GptOssForCausalLM(config), GptOssForCausalLM(config, quant_config=Mxfp4Config())
    assert a.load_weights(plain.items()) == b.load_weights(packed.items()) == {n for n, _ in a.named_parameters()}
    b_params = dict(b.named_parameters())
    for name, param in a.named_parameters():
        assert torch.equal(param, b_params[name]), name
    # gate / up de-interleaved: expert 1's gate rows are the checkpoint's even columns.
    w13 = a.model.layers[0].mlp.experts.w13_weight
    gate_up = plain["model.layers.0.mlp.experts.gate_up_proj"][1]  # [H, 2I]
    assert torch.equal(w13[1, :32], gate_up[:, 0::2].t()) and torch.equal(w13[1, 32:], gate_up[:, 1::2].t())
    sinks = a.model.layers[1].self_attn.attn.sinks
    assert torch.equal(sinks, tensors["model.layers.1.self_attn.sinks"])


# ---------------------------------------------------------------- the MoE block alone

def _moe_case(seed: int = 3):
    """transformers' GptOssMLP with random weights (limit 1.0: the clamps bite) and the same
    weights in FusedMoE's layout: gate / up de-interleaved, [E, out, in]."""
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    config = GptOssConfig(hidden_size=64, intermediate_size=32, num_local_experts=6, num_experts_per_tok=3,
                          swiglu_limit=1.0)
    mlp = GptOssMLP(config).float()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.3 if p.dim() > 1 else 0.2))
    e = mlp.experts
    gate_up = e.gate_up_proj.detach().transpose(1, 2)  # [E, 2I, H], rows gate, up, gate, ...
    w13 = torch.cat([gate_up[:, 0::2], gate_up[:, 1::2]], dim=1)
    b13 = torch.cat([e.gate_up_proj_bias[:, 0::2], e.gate_up_proj_bias[:, 1::2]], dim=1).detach()
    w2, b2 = e.down_proj.detach().transpose(1, 2).contiguous(), e.down_proj_bias.detach()
    x = torch.randn(37, 64, generator=gen)
    return mlp, config, x, (w13.contiguous(), w2, b13, b2)


def test_moe_block_matches_transformers():
    from pagedlm.layers.fused_moe import reference

    mlp, _, x, (w13, w2, b13, b2) = _moe_case()
    with torch.no_grad():
        expected, _ = mlp(x.unsqueeze(0))
        logits = mlp.router(x)[0]
    weights, ids = reference.select_experts(logits, 3, True)
    # alpha and limit as transformers' module holds them (older releases ignore the config's)
    out = reference.fused_experts(x, w13, w2, weights, ids, w13_bias=b13, w2_bias=b2, activation="swigluoai",
                                  swiglu_alpha=mlp.experts.alpha, swiglu_limit=mlp.experts.limit)
    torch.testing.assert_close(out, expected[0], rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available() and __import__("os").environ.get("TRITON_INTERPRET") != "1",
                    reason="the Triton MoE kernel needs CUDA (or TRITON_INTERPRET=1)")
def test_triton_moe_biases_and_clamped_swiglu():
    """The Triton grouped GEMMs with gpt-oss's biases and activation against the reference."""
    from pagedlm.layers.fused_moe import reference, triton_moe

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float16  # the interpreter's bf16 dot is unreliable
    mlp, _, x, tensors = _moe_case(seed=4)
    with torch.no_grad():
        logits = mlp.router(x)[0]
    weights, ids = reference.select_experts(logits, 3, True)
    kwargs = dict(activation="swigluoai", swiglu_alpha=1.702, swiglu_limit=1.0)
    w13, w2, b13, b2 = tensors
    expected = reference.fused_experts(x, w13, w2, weights, ids, w13_bias=b13, w2_bias=b2, **kwargs)
    w13, w2, b13, b2 = (t.to(device, dtype).contiguous() for t in tensors)
    out = triton_moe.fused_experts(x.to(device, dtype), w13, w2, weights.to(device), ids.to(device),
                                   w13_bias=b13, w2_bias=b2, **kwargs)
    err = ((out.float().cpu() - expected).norm() / expected.norm()).item()
    assert err < 2e-2, err


def test_mxfp4_is_not_an_online_method():
    from pagedlm.layers.quantization import QuantizationError, resolve_quantization

    class Unquantized:
        quantization_config = None

    with pytest.raises(QuantizationError, match="needs an MXFP4 checkpoint"):
        resolve_quantization(Unquantized(), "mxfp4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_greedy_matches_cpu(checkpoint):
    """On a GPU (Triton attention with sinks and sliding windows, the Triton MoE with biases and
    the clamped SwiGLU, CUDA graphs): greedy ids equal the CPU engine's bar a rare near-tie
    (float32 dots may run in tf32), as tests/gpu/test_gpu_archs_new.py checks the other archs."""
    from models.test_parity import PROMPTS

    from pagedlm import LLM, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)

    def ids(llm):
        return [o.outputs[0].token_ids
                for o in llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)]

    cpu = ids(LLM(checkpoint, device="cpu", max_model_len=128))
    gpu = ids(LLM(checkpoint, device="cuda", dtype="float32", max_model_len=128, max_num_seqs=8,
                  num_gpu_blocks_override=256))
    assert sum(a == b for a, b in zip(cpu, gpu)) >= len(PROMPTS) - 1, (cpu, gpu)
