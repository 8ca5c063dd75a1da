"""GPTQ under tensor parallelism (gloo, worker processes): TP=2 equals TP=1 on the shared
workload (chunked prefill, prefix hits, preemption). The act-order checkpoint covers the hard
cases at once: qweight narrowed along its packed input dim (row-parallel), qzeros along its
packed output dim (column-parallel, fused q/k/v and gate/up parts at packed offsets), and
row-parallel ranks that keep every group because their rows index any group. AWQ's packed
tensors go through the same narrowing (packed output dim), so one format keeps the test short."""

from __future__ import annotations

import pytest

from pagedlm import LLM
from tests.models.wna16_helpers import quantize_checkpoint

from .parallel_helpers import ENGINE_KWARGS, assert_same, run_workload

VARIANTS = {
    "gptq_act_order": ("gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
}


@pytest.fixture(scope="module")
def float_checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("wna16_tp_float"), seed=21))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tp2_equals_tp1(float_checkpoint, tmp_path, variant: str) -> None:
    fmt, options = VARIANTS[variant]
    qdir, _ = quantize_checkpoint(float_checkpoint, tmp_path / "q", tmp_path / "ref", fmt, **options)
    single = LLM(str(qdir), **ENGINE_KWARGS)
    try:
        reference = run_workload(single)
    finally:
        single.llm_engine.engine_core.shutdown()
    llm = LLM(str(qdir), tensor_parallel_size=2, **ENGINE_KWARGS)
    try:
        outputs = run_workload(llm)
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert_same(reference, outputs)
