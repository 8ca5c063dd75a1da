"""Quantized checkpoints, written by the test in each format's exact tensor names and dtypes
(quant_helpers.py), against transformers running the dequantized weights in float32 with the
activations fake-quantized the same way: greedy ids and top-k logprobs at the parity
tolerance, except that activation quantization may round one element of one step to the
neighbouring code (inputs equal to ~1e-7 straddle a rounding boundary): at most
FLIPS_ALLOWED positions of a run may differ by up to FLIP_TOL (one fp8 step of one activation
shifts a logprob by ~1e-3; a wrong scale or shard shifts every position far more). Online fp8 (a float checkpoint quantized while loading) within a stated tolerance
of the unquantized model. Prefix caching and chunked prefill (a small token budget) stay on."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM
from pagedlm.layers.quantization.w8a8 import W8LinearMethod

from quant_helpers import FP8, Scheme, add_fake_quant_hooks, write_quantized
from test_parity import MAX_TOKENS, NUM_LOGPROBS, PROMPTS, greedy

SCHEMES = {
    "hf_fp8_static": Scheme("fp8", FP8, per_channel=False, activations="static"),
    "hf_fp8_dynamic": Scheme("fp8", FP8, per_channel=False, activations="token"),
    "ct_fp8_channel_token": Scheme("compressed-tensors", FP8, per_channel=True, activations="token"),
    "ct_fp8_tensor_static": Scheme("compressed-tensors", FP8, per_channel=False, activations="static"),
    "ct_int8_w8a8": Scheme("compressed-tensors", torch.int8, per_channel=True, activations="token"),
    "ct_int8_w8a16": Scheme("compressed-tensors", torch.int8, per_channel=True, activations=None),
}
TOL = 1e-4  # the parity tolerance of test_parity.py
# One int8 step of a per-token scale is 1/127 of the token's largest activation: a flip moved a
# logprob by 7.5e-3 on the 2-core box (fp8's finer steps stay near 1e-3).
FLIP_TOL, FLIPS_ALLOWED = 2e-2, 2
ENGINE = dict(device="cpu", max_model_len=128, max_num_batched_tokens=32, block_size=4)


def hf_reference(path: str, scheme: Scheme, input_scales: dict[str, float], clamp: float | None = None) -> list:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    add_fake_quant_hooks(model, scheme, input_scales, clamp)
    results = []
    for prompt in PROMPTS:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                                 do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        results.append((out.sequences[0, len(prompt):].tolist(), [s[0].float().log_softmax(-1) for s in out.logits]))
    return results


def position_error(ours, ref_lps: torch.Tensor, token: int) -> float:
    """Largest logprob difference over the chosen token and transformers' top-k."""
    ref_top = torch.topk(ref_lps, NUM_LOGPROBS)
    assert ours[token].rank == 1
    errors = [abs(ours[token].logprob - ref_lps[token].item())]
    for tid, lp in zip(ref_top.indices.tolist(), ref_top.values.tolist()):
        assert tid in ours
        errors.append(abs(ours[tid].logprob - lp))
    return max(errors)


def check_close(ref: list, outputs, prompts) -> None:
    """test_parity's check (vLLM's divergence rule), with FLIPS_ALLOWED positions up to FLIP_TOL."""
    flips = 0
    for (ref_ids, ref_lps), out, prompt in zip(ref, outputs, prompts, strict=True):
        completion = out.outputs[0]
        assert out.prompt_token_ids == prompt and len(completion.token_ids) == MAX_TOKENS
        for pos, (ref_id, our_id) in enumerate(zip(ref_ids, completion.token_ids)):
            ours = completion.logprobs[pos]
            if ref_id != our_id:
                assert our_id in torch.topk(ref_lps[pos], NUM_LOGPROBS).indices.tolist() and ref_id in ours, (
                    f"prompt {prompt[:6]}... diverged at {pos}: hf {ref_id}, pagedlm {our_id}")
                break
            error = position_error(ours, ref_lps[pos], our_id)
            assert error < FLIP_TOL, f"prompt {prompt[:6]}... position {pos}: logprob error {error:.2e}"
            flips += error >= TOL
    assert flips <= FLIPS_ALLOWED, f"{flips} positions beyond {TOL}"


@pytest.fixture(scope="module")
def fixed_checkpoints(seeded_checkpoint) -> dict[str, str]:
    """llama and qwen2 with fixed seeds (the seeds they get when this module runs alone): how
    many activations sit near an fp8/int8 rounding boundary depends on the weights."""
    return {"llama": seeded_checkpoint("llama", 1), "qwen2": seeded_checkpoint("qwen2", 2)}


@pytest.mark.parametrize("name", list(SCHEMES))
def test_quantized_checkpoint_matches_dequantized_transformers(fixed_checkpoints, tmp_path, name: str) -> None:
    scheme = SCHEMES[name]
    src = fixed_checkpoints["qwen2" if name == "ct_int8_w8a8" else "llama"]  # qwen2: biased q/k/v
    quant, oracle = tmp_path / "quant", tmp_path / "oracle"
    input_scales = write_quantized(src, quant, oracle, scheme, PROMPTS)
    llm = LLM(str(quant), **ENGINE)
    layer = llm.llm_engine.engine_core.runner.model.model.layers[0].self_attn.qkv_proj
    assert isinstance(layer.quant_method, W8LinearMethod) and layer.weight.dtype == scheme.dtype
    assert llm.llm_engine.config.model_config.quantization == scheme.fmt
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    ref = hf_reference(str(oracle), scheme, input_scales)
    check_close(ref, llm.generate(prompts, greedy(), use_tqdm=False), PROMPTS)
    # Again: the prompts are now served from the prefix cache.
    check_close(ref, llm.generate(prompts, greedy(), use_tqdm=False), PROMPTS)
    assert llm.llm_engine.get_stats().prefix_cache_hits_total > 0
