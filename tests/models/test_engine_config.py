"""Start-up configuration: KV sizing errors, RoPE scaling variants, and the bench CLIs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pagedlm import LLM
from pagedlm.config import ConfigError
from pagedlm.layers.rotary import compute_cos_sin_cache


def test_max_model_len_that_does_not_fit_names_the_largest_that_does(llama_checkpoint):
    with pytest.raises(ConfigError, match="max_model_len to at most 80"):
        LLM(llama_checkpoint, num_gpu_blocks_override=5, block_size=16, max_model_len=200, device="cpu")


def test_dynamic_rope_within_the_original_context_is_the_default():
    default = compute_cos_sin_cache(16, 128, 10000.0, "default", {}, 128)
    dynamic = compute_cos_sin_cache(16, 128, 10000.0, "dynamic", {"factor": 4.0}, 128)
    assert torch.equal(default, dynamic)
    longer = compute_cos_sin_cache(16, 256, 10000.0, "dynamic", {"factor": 4.0}, 128)
    assert not torch.allclose(longer[:128], default)  # NTK-scaled base past the original context


def test_linear_rope_divides_positions():
    default = compute_cos_sin_cache(16, 64, 10000.0, "default", {}, 64)
    linear = compute_cos_sin_cache(16, 128, 10000.0, "linear", {"factor": 2.0}, 64)
    assert torch.allclose(linear[::2][:64], default, atol=1e-6)


def test_unsupported_rope_type_is_a_clear_error():
    with pytest.raises(ValueError, match="mrope"):
        compute_cos_sin_cache(16, 64, 10000.0, "mrope", {"factor": 2.0}, 64)


@pytest.mark.parametrize("bench, extra", [
    ("throughput", ["--num-prompts", "6", "--input-len", "12", "--output-len", "5", "--random-range-ratio", "0.5"]),
    ("latency", ["--batch-size", "2", "--input-len", "12", "--output-len", "4", "--num-iters", "2",
                 "--num-iters-warmup", "1"]),
])
def test_bench_cli_runs(llama_checkpoint, bench, extra):
    cmd = [sys.executable, "-m", "pagedlm", "bench", bench, "--model", llama_checkpoint, "--load-format", "dummy",
           "--max-model-len", "64", "--device", "cpu", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = "Throughput:" if bench == "throughput" else "Time per output token:"
    assert expected in result.stdout


def test_rope_scaling_stretches_the_default_max_model_len():
    """vLLM's derivation: linear / dynamic / yarn scale the context by ``factor`` (yarn from its
    original context), so Qwen2.5 with the yarn block its card recommends serves 131072 tokens
    by default and accepts --max-model-len 131072; llama3, longrope and Gemma 3 configs already
    state their stretched length."""
    from transformers import Gemma3TextConfig, LlamaConfig, Phi3Config, Qwen2Config

    from pagedlm.config import derive_max_model_len

    yarn = Qwen2Config(max_position_embeddings=32768, rope_scaling={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768})
    assert derive_max_model_len(yarn, None) == 131072
    assert derive_max_model_len(yarn, 131072) == 131072
    with pytest.raises(ConfigError, match="trained context of 131072"):
        derive_max_model_len(yarn, 131073)
    linear = LlamaConfig(max_position_embeddings=4096, rope_scaling={"type": "linear", "factor": 2.0})
    dynamic = LlamaConfig(max_position_embeddings=4096, rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    assert (derive_max_model_len(linear, None), derive_max_model_len(dynamic, None)) == (8192, 16384)
    llama3 = LlamaConfig(max_position_embeddings=131072, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192})
    longrope = Phi3Config(max_position_embeddings=512, original_max_position_embeddings=48, pad_token_id=0,
                          rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * 48,
                                        "long_factor": [2.0] * 48})
    gemma3 = Gemma3TextConfig(max_position_embeddings=131072, rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    assert [derive_max_model_len(c, None) for c in (llama3, longrope, gemma3, LlamaConfig())] == [
        131072, 512, 131072, 2048]


def test_eos_ids_of_config_json_stop_a_checkpoint_without_generation_config(tmp_path, llama_checkpoint):
    """vLLM reads a checkpoint's extra EOS ids from config.json when it has no
    generation_config.json (transformers' GenerationConfig.from_model_config), e.g. a Llama 3
    fine-tune whose config lists <|eot_id|> besides the tokenizer's <|end_of_text|>."""
    import json
    import shutil

    from pagedlm import SamplingParams

    prompt = {"prompt_token_ids": [11, 23, 5, 60, 2]}
    path = tmp_path / "ckpt"
    shutil.copytree(llama_checkpoint, path)
    assert not (path / "generation_config.json").exists()
    free = LLM(str(path), device="cpu", max_model_len=64).generate(
        prompt, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)[0].outputs[0]
    stop_at = next(i for i, t in enumerate(free.token_ids) if i >= 2 and t not in free.token_ids[:i])
    config = json.loads((path / "config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], free.token_ids[stop_at]]
    (path / "config.json").write_text(json.dumps(config))
    out = LLM(str(path), device="cpu", max_model_len=64).generate(
        prompt, SamplingParams(temperature=0, max_tokens=8), use_tqdm=False)[0].outputs[0]
    assert list(out.token_ids) == list(free.token_ids[:stop_at + 1])
    assert (out.finish_reason, out.stop_reason) == ("stop", free.token_ids[stop_at])


def test_generation_config_directory_names_the_extra_eos_ids(tmp_path, llama_checkpoint):
    """--generation-config DIR: the extra EOS ids come from DIR's generation_config.json, as in
    vLLM (ModelConfig.try_get_generation_config reads that directory), not the model's; with
    'vllm' the model's file still names them (only its sampling defaults are dropped)."""
    import json
    import shutil

    from pagedlm import SamplingParams

    prompt = {"prompt_token_ids": [11, 23, 5, 60, 2]}
    path = tmp_path / "ckpt"
    shutil.copytree(llama_checkpoint, path)
    greedy = SamplingParams(temperature=0, max_tokens=8)
    free = LLM(str(path), device="cpu", max_model_len=64).generate(
        prompt, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)[0].outputs[0]
    stop_at = next(i for i, t in enumerate(free.token_ids) if i >= 2 and t not in free.token_ids[:i])
    eos = json.loads((path / "config.json").read_text())["eos_token_id"]
    elsewhere = tmp_path / "gen"
    elsewhere.mkdir()
    (elsewhere / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, free.token_ids[stop_at]]}))
    out = LLM(str(path), device="cpu", max_model_len=64, generation_config=str(elsewhere)).generate(
        prompt, greedy, use_tqdm=False)[0].outputs[0]
    assert list(out.token_ids) == list(free.token_ids[:stop_at + 1])
    assert out.stop_reason == free.token_ids[stop_at]
    # the model's own file: ignored when a directory is named, read under 'vllm'
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, free.token_ids[stop_at]]}))
    (elsewhere / "generation_config.json").write_text(json.dumps({"eos_token_id": eos}))
    out = LLM(str(path), device="cpu", max_model_len=64, generation_config=str(elsewhere)).generate(
        prompt, greedy, use_tqdm=False)[0].outputs[0]
    assert list(out.token_ids) == list(free.token_ids[:len(out.token_ids)]) and len(out.token_ids) > stop_at + 1
    out = LLM(str(path), device="cpu", max_model_len=64, generation_config="vllm").generate(
        prompt, greedy, use_tqdm=False)[0].outputs[0]
    assert list(out.token_ids) == list(free.token_ids[:stop_at + 1])
