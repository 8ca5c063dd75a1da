"""Tensor parallelism on the non-Llama decoders of tests/models/test_parity_archs_other.py:
TP=2 (two gloo worker processes) gives the single-rank engine's greedy ids and logprobs on
the shared multi-rank workload. Covers GPT-NeoX's per-head fused query_key_value split into
each rank's heads, StarCoder2's GQA with biases on every projection, Command-R+'s per-head
q/k LayerNorm weights split by heads, GPT-BigCode's single K/V head replicated on both
ranks, and DeepSeek's latent attention (q_b_proj / q_proj and kv_b_proj split by heads, the
latent projections and norms whole on both ranks) with split experts
(tests/models/test_parity_deepseek.py)."""

from __future__ import annotations

import pytest


from models.arch_parity_helpers import checkpoint_getter
from models.test_parity_archs_other import CHECKPOINTS as OTHER_CHECKPOINTS
from models.test_parity_deepseek import CHECKPOINTS as DEEPSEEK_CHECKPOINTS

from .parallel_helpers import assert_tp2_equals_tp1

CHECKPOINTS = {**OTHER_CHECKPOINTS, **DEEPSEEK_CHECKPOINTS}
ARCHS = ["gpt_neox", "starcoder2", "cohere", "gpt_bigcode", "deepseek_v3", "deepseek_v2_lite"]


@pytest.mark.parametrize("arch", ARCHS)
def test_tp2_equals_tp1(tmp_path_factory, arch: str) -> None:
    path = checkpoint_getter(tmp_path_factory, CHECKPOINTS, 7)(arch)
    assert_tp2_equals_tp1(path)
