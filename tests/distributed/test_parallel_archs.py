"""Tensor parallelism on the families beyond Llama: TP=2 (two gloo worker processes) gives
the single-rank engine's greedy ids and logprobs for each, on the shared multi-rank workload
(chunked prefill, prefix-cache hits, preemption). Covers sharded attention widths (Gemma),
experts split on the intermediate dimension (MoE), fused checkpoint tensors (Phi-3) and
Conv1D weights with learned positions (GPT-2)."""

from __future__ import annotations

import pytest

from .parallel_helpers import assert_tp2_equals_tp1

ARCHS = ["gemma2", "qwen3_moe", "qwen2_moe", "phi3", "gpt2"]


@pytest.mark.parametrize("arch", ARCHS)
def test_tp2_equals_tp1(checkpoint_factory, arch: str) -> None:
    path = checkpoint_factory(arch)
    assert_tp2_equals_tp1(path)
