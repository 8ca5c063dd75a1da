"""Quantization through the engine: online fp8 (a float checkpoint quantized while loading)
against the same model saved as an fp8 checkpoint and against the unquantized model; dummy
weights per format; and the errors a user can cause (mismatched --quantization, unknown or
unsupported formats, an architecture without quantized layers)."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from pagedlm import LLM, SamplingParams
from pagedlm.config import ConfigError

from quant_helpers import FP8, Scheme, write_quantized
from test_parity import PROMPTS, greedy

ENGINE = dict(device="cpu", max_model_len=128)
# Online fp8 (e4m3: 3 mantissa bits) against float32 on the tiny random model, whose large
# weights give peaked logits: the mean |logprob error| over all prompt positions, measured
# 0.15 (prompt logprobs average -7).
ONLINE_FP8_MEAN_TOL = 0.3
TEACHER_FORCED = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)


def _prompts() -> list[dict]:
    return [{"prompt_token_ids": p} for p in PROMPTS]


def _prompt_logprobs(outputs) -> list[float]:
    return [o.prompt_logprobs[pos][t].logprob for o in outputs for pos, t in enumerate(o.prompt_token_ids[1:], 1)]


@pytest.fixture(scope="module")
def llama(checkpoint_factory) -> str:
    return checkpoint_factory("llama")


def _assert_online_is_the_checkpoint_and_close_to_float(llama: str, tmp_path: Path, quantization: str,
                                                        dtype: torch.dtype) -> LLM:
    """Online ``quantization`` (per-channel weights quantized while loading, per-token
    activations) gives the outputs of the same quantization written as a compressed-tensors
    checkpoint, and teacher-forced prompt logprobs close to the float model's."""
    online = LLM(llama, quantization=quantization, **ENGINE)
    assert online.llm_engine.config.model_config.quantization == quantization
    layer = online.llm_engine.engine_core.runner.model.model.layers[0].mlp.down_proj
    assert layer.weight.dtype == dtype and layer.weight_scale.shape == (1, layer.weight.shape[0])
    scheme = Scheme("compressed-tensors", dtype, per_channel=True, activations="token")
    write_quantized(llama, tmp_path / "ckpt", tmp_path / "oracle", scheme, PROMPTS)
    saved = LLM(str(tmp_path / "ckpt"), **ENGINE)
    ours, theirs = (llm.generate(_prompts(), greedy(), use_tqdm=False) for llm in (online, saved))
    for a, b in zip(ours, theirs, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for lp_a, lp_b in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert all(abs(lp_a[t].logprob - lp_b[t].logprob) < 1e-5 for t in lp_a)
    # Against the float model: teacher-forced prompt logprobs, so nothing diverges.
    quant = _prompt_logprobs(online.generate(_prompts(), TEACHER_FORCED, use_tqdm=False))
    ref = _prompt_logprobs(LLM(llama, **ENGINE).generate(_prompts(), TEACHER_FORCED, use_tqdm=False))
    errors = [abs(a - b) for a, b in zip(quant, ref, strict=True)]
    assert 0 < statistics.mean(errors) < ONLINE_FP8_MEAN_TOL
    return online


def test_online_fp8_is_the_per_channel_checkpoint_and_close_to_float(llama: str, tmp_path: Path) -> None:
    _assert_online_is_the_checkpoint_and_close_to_float(llama, tmp_path, "fp8", FP8)


def test_online_int8_is_the_per_channel_checkpoint_and_close_to_float(llama: str, tmp_path: Path) -> None:
    """``--quantization int8``: int8 weights per channel, int8 activations per token; a quantized
    checkpoint refuses it."""
    _assert_online_is_the_checkpoint_and_close_to_float(llama, tmp_path, "int8", torch.int8)
    with pytest.raises(ConfigError, match="does not match the checkpoint"):
        LLM(str(tmp_path / "ckpt"), quantization="int8", **ENGINE)


def _with_quant_config(src: str, out: Path, quant_config: dict) -> Path:
    shutil.copytree(src, out)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = quant_config
    (out / "config.json").write_text(json.dumps(config))
    return out


INT8_W8A8 = {"quant_method": "compressed-tensors", "format": "int-quantized", "ignore": ["lm_head"],
             "config_groups": {"g": {"targets": ["Linear"],
                                     "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"},
                                     "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                                                           "dynamic": True, "strategy": "token"}}}}


@pytest.mark.parametrize("quant_config,dtype", [
    ({"quant_method": "fp8", "activation_scheme": "static"}, FP8),
    (INT8_W8A8, torch.int8),
], ids=["fp8_static", "int8_w8a8"])
def test_dummy_weights_are_valid_quantized_params(llama: str, tmp_path: Path, quant_config: dict, dtype) -> None:
    path = _with_quant_config(llama, tmp_path / "q", quant_config)
    llm = LLM(str(path), load_format="dummy", **ENGINE)
    model = llm.llm_engine.engine_core.runner.model
    qkv = model.model.layers[1].self_attn.qkv_proj
    assert qkv.weight.dtype == dtype and qkv.weight.float().abs().max() > 0
    assert torch.all(qkv.weight_scale > 0) and torch.isfinite(qkv.weight_scale).all()
    out = llm.generate(_prompts()[:2], SamplingParams(max_tokens=4, logprobs=1, temperature=0.0), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 4 and all(
        torch.isfinite(torch.tensor(lp[t].logprob)) for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids))
        for o in out)


def test_refusals(llama: str, checkpoint_factory, tmp_path: Path) -> None:
    fp8 = _with_quant_config(llama, tmp_path / "fp8", {"quant_method": "fp8", "activation_scheme": "dynamic"})
    with pytest.raises(ConfigError, match="does not match the checkpoint.*'fp8'"):
        LLM(str(fp8), quantization="compressed-tensors", **ENGINE)
    unknown = _with_quant_config(llama, tmp_path / "unknown", {"quant_method": "bitsandbytes_9bit"})
    with pytest.raises(ConfigError, match="quant_method 'bitsandbytes_9bit'.*supported.*fp8"):
        LLM(str(unknown), **ENGINE)
    # block-wise fp8 runs (test_block_fp8.py), but this model's 64-wide layers are not whole 128-row blocks
    block = _with_quant_config(llama, tmp_path / "block", {"quant_method": "fp8", "weight_block_size": [128, 128]})
    with pytest.raises(ConfigError, match="block-wise fp8 needs whole 128 x 128 blocks"):
        LLM(str(block), **ENGINE)
    bad_block = _with_quant_config(llama, tmp_path / "bad_block", {"quant_method": "fp8", "weight_block_size": [128]})
    with pytest.raises(ConfigError, match="weight_block_size must be two positive integers"):
        LLM(str(bad_block), **ENGINE)
    packed = _with_quant_config(llama, tmp_path / "packed", {**INT8_W8A8, "format": "pack-quantized"})
    with pytest.raises(ConfigError, match="pack-quantized weights with quantized input activations"):
        LLM(str(packed), **ENGINE)
    group = {**INT8_W8A8, "config_groups": {"g": {**INT8_W8A8["config_groups"]["g"], "weights": {
        "num_bits": 8, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}}}}
    with pytest.raises(ConfigError, match="weight strategy 'group'"):
        LLM(str(_with_quant_config(llama, tmp_path / "group", group)), **ENGINE)
    with pytest.raises(ConfigError, match="unknown quantization 'int3'"):
        LLM(llama, quantization="int3", **ENGINE)
    with pytest.raises(ConfigError, match="GPT2LMHeadModel does not support quantization"):
        LLM(checkpoint_factory("gpt2"), quantization="fp8", **ENGINE)


@pytest.mark.parametrize("activations", ["static", None], ids=["fp8_static", "int8_w8a16"])
def test_tensor_parallel_equals_single_rank(llama: str, tmp_path: Path, activations: str | None) -> None:
    """Per-tensor scales of q/k/v and gate/up loaded per shard on two gloo ranks; the shared
    workload (chunked prefill, prefix hits, preemption) gives TP=1's ids and logprobs."""
    from distributed.parallel_helpers import ENGINE_KWARGS, assert_same, run_workload

    dtype = FP8 if activations else torch.int8
    scheme = Scheme("fp8" if activations else "compressed-tensors", dtype, per_channel=False, activations=activations)
    write_quantized(llama, tmp_path / "q", tmp_path / "o", scheme, PROMPTS)
    single = LLM(str(tmp_path / "q"), **ENGINE_KWARGS)
    ref = run_workload(single)
    single.llm_engine.engine_core.shutdown()
    tp = LLM(str(tmp_path / "q"), tensor_parallel_size=2, **ENGINE_KWARGS)
    try:
        outputs = run_workload(tp)
        stats = tp.llm_engine.get_stats()
    finally:
        tp.llm_engine.engine_core.shutdown()
    assert stats.num_preemptions_total > 0 and stats.prefix_cache_hits_total > 0
    # Static fp8 activations: the all-reduce sums the row-parallel partials in another order,
    # and a last-bit difference can move one activation across an fp8 rounding step (~1e-3 in
    # a logprob, as in test_quant_parity's static formats). Weight-only int8 stays exact.
    assert_same(ref, outputs, tol=5e-3 if activations else 1e-4)


def test_fp8_without_fp8_gemm_runs_as_w8a16(llama: str, tmp_path: Path, monkeypatch) -> None:
    """A GPU below compute capability 8.9 (simulated): fp8 weights, unquantized activations, a log line."""
    import dataclasses

    from pagedlm.kernels.quant_ops import REFERENCE_OPS
    from pagedlm.layers.quantization import w8a8

    monkeypatch.setattr(w8a8, "quant_ops", lambda device: dataclasses.replace(REFERENCE_OPS, fp8_gemm=False))
    monkeypatch.setattr(w8a8, "_fallback_logged", False)
    warnings: list[str] = []
    monkeypatch.setattr(w8a8.logger, "warning", lambda msg, *args: warnings.append(msg % args))
    path = _with_quant_config(llama, tmp_path / "fp8", {"quant_method": "fp8", "activation_scheme": "static"})
    llm = LLM(str(path), load_format="dummy", **ENGINE)
    layer = llm.llm_engine.engine_core.runner.model.model.layers[0].mlp.down_proj
    assert layer.weight.dtype == FP8 and layer.quant_method.weight_only
    assert len(warnings) == 1 and "no fp8 GEMM" in warnings[0] and "W8A16" in warnings[0]  # once, not per layer
    x = torch.randn(3, layer.weight.shape[1])
    expect = x @ (layer.weight.float() * layer.weight_scale.t()).t()  # no activation quantization
    torch.testing.assert_close(layer(x), expect, rtol=1e-5, atol=1e-5)


def test_norm_and_gate_quantize_for_per_token_8bit_layers(llama: str, monkeypatch) -> None:
    """With per-token activations the RMSNorms hand the 8-bit layers their codes (one op
    instead of two); the outputs are exactly those of quantizing in the layer."""
    from pagedlm.kernels import reference  # the CPU op table is copied from it at engine start
    from pagedlm.layers.quantization.w8a8 import W8LinearMethod

    params = SamplingParams(max_tokens=4, logprobs=2, temperature=0.0)
    calls = {"rms_norm_quant": 0, "fused_add_rms_norm_quant": 0}
    for name in calls:
        def counted(*args, _name=name, _fn=getattr(reference, name), **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)
        monkeypatch.setattr(reference, name, counted)
    fused = LLM(llama, quantization="fp8", **ENGINE).generate(_prompts(), params, use_tqdm=False)
    assert all(n > 0 for n in calls.values()), calls
    monkeypatch.setattr(W8LinearMethod, "input_codes_dtype", lambda self, layer: None)
    before = dict(calls)
    plain = LLM(llama, quantization="fp8", **ENGINE).generate(_prompts(), params, use_tqdm=False)
    assert calls == before  # nothing fused when the layers take float input only
    for a, b in zip(fused, plain, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert [{t: lp.logprob for t, lp in d.items()} for d in a.outputs[0].logprobs] == \
            [{t: lp.logprob for t, lp in d.items()} for d in b.outputs[0].logprobs]
