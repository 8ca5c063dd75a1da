"""Start-up configuration: KV sizing errors, RoPE scaling variants, and the bench CLIs."""

from __future__ import annotations

import json
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


# The keys of vLLM's `bench throughput|latency --output-json` files.
VLLM_JSON_KEYS = {"throughput": {"elapsed_time", "num_requests", "total_num_tokens", "requests_per_second",
                                 "tokens_per_second"},
                  "latency": {"avg_latency", "latencies", "percentiles"}}


@pytest.mark.parametrize("bench, extra", [
    ("throughput", ["--num-prompts", "6", "--input-len", "12", "--output-len", "5", "--dataset-name", "random",
                    "--n", "2", "--prefix-len", "3"]),
    ("latency", ["--batch-size", "2", "--input-len", "12", "--output-len", "4", "--num-iters", "2",
                 "--num-iters-warmup", "1"]),
])
def test_bench_cli_runs(llama_checkpoint, bench, extra, tmp_path):
    out_json = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "pagedlm", "bench", bench, "--model", llama_checkpoint, "--load-format", "dummy",
           "--max-model-len", "64", "--device", "cpu", "--output-json", str(out_json), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads(out_json.read_text())
    assert VLLM_JSON_KEYS[bench] <= set(saved)
    if bench == "throughput":
        # vLLM's lines; --n 2 generates two sequences of 5 tokens for each of the 6 prompts of
        # 3 shared prefix tokens + 12
        assert "Throughput:" in result.stdout and "Total num output tokens:  60" in result.stdout
        assert "Total num prompt tokens:  90" in result.stdout
        assert saved["num_requests"] == 6 and saved["output_tokens"] == 60 and saved["total_num_tokens"] == 150
    else:
        assert "Avg latency: " in result.stdout and " seconds" in result.stdout
        assert "Time per output token:" in result.stdout
        assert len(saved["latencies"]) == 2 and set(saved["percentiles"]) == {"10", "25", "50", "75", "90", "99"}


def test_bench_throughput_sharegpt_file(llama_checkpoint, tmp_path):
    """vLLM's `bench throughput --dataset-name sharegpt --dataset-path FILE`: prompts are the
    first turns, counted with the model's tokenizer; the reply's length is the output length."""
    from transformers import AutoTokenizer

    turns = [("Tell me about the sea and its ships.", "The sea is wide and deep and blue."),
             ("What is a cat, in a few words?", "A small animal that likes to sleep."),
             ("x", "too short a prompt: skipped by the length filter")]
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps([{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
                                for q, a in turns]))
    out_json = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "pagedlm", "bench", "throughput", "--model", llama_checkpoint, "--load-format",
           "dummy", "--max-model-len", "64", "--device", "cpu", "--dataset-name", "sharegpt", "--dataset-path",
           str(data), "--num-prompts", "2", "--output-json", str(out_json)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    saved = json.loads(out_json.read_text())
    tokenizer = AutoTokenizer.from_pretrained(llama_checkpoint)
    assert saved["num_requests"] == 2
    assert saved["input_tokens"] == sum(len(tokenizer(q).input_ids) for q, _ in turns[:2])
    assert saved["output_tokens"] == sum(len(tokenizer(a).input_ids) for _, a in turns[:2])


@pytest.mark.parametrize("flags, message", [
    (["--dataset-name", "sharegpt", "--dataset-path", "/nonexistent.json"], "cannot read the ShareGPT file"),
    (["--dataset-name", "random", "--random-range-ratio", "1.5"], "--random-range-ratio must be in [0, 1)"),
])
def test_bench_throughput_dataset_errors_are_one_line(llama_checkpoint, flags, message):
    """The command's entry point in this process (a subprocess adds seconds of imports): a
    SystemExit with one line of text is what Python prints without a traceback."""
    from pagedlm.entrypoints.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "throughput", "--model", llama_checkpoint, "--load-format", "dummy", "--max-model-len", "64",
              "--device", "cpu", "--num-prompts", "2", *flags])
    assert isinstance(exc.value.code, str) and message in exc.value.code and "\n" not in exc.value.code


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
