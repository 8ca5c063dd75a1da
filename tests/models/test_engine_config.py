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
