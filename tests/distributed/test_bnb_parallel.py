"""bitsandbytes NF4 (double quantization) under tensor parallelism (gloo, worker processes):
TP=2 equals TP=1 on the shared workload. The packed codes [N, K / 2] and the absmax
[N, K / 64] are narrowed along rows (column-parallel, fused q/k/v and gate/up parts each with
its own nested absmax and offset) and along columns (row-parallel o_proj / down_proj, whose
per-rank input widths, 64 and 128, are whole blocks)."""

from __future__ import annotations

import pytest

from tests.models.bnb_helpers import write_bnb_checkpoint

from .parallel_helpers import assert_tp2_equals_tp1


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    # hidden 128 so that o_proj's per-rank input (64) is a whole bitsandbytes block.
    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("bnb_tp_float"), seed=23, hidden_size=128,
                                     intermediate_size=256, num_attention_heads=4, num_key_value_heads=2))


def test_tp2_equals_tp1(float_checkpoint, tmp_path) -> None:
    qdir = tmp_path / "q"
    write_bnb_checkpoint(float_checkpoint, qdir, tmp_path / "ref", "nf4", True)
    assert_tp2_equals_tp1(str(qdir))
