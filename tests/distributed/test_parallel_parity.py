"""Tensor and pipeline parallelism on CPU (gloo, worker processes): greedy ids, top-k
logprobs, prompt logprobs and a seeded random request equal the single-rank engine, on a
workload with chunked prefill, prefix-cache hits and preemption; with fewer KV heads than
ranks (replicated KV heads), tied embeddings split across pipeline stages, and async
scheduling over the worker processes. With pipeline stages the engine keeps one batch
per stage in flight (the batch queue reaches depth P)."""

from __future__ import annotations

import pytest

from pagedlm import LLM

from .parallel_helpers import ENGINE_KWARGS, assert_equals_single_rank, assert_same, run_workload

CHECKPOINTS = {
    "kv1_tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "kv2": dict(num_key_value_heads=2),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    from pagedlm.demo import build_tiny_checkpoint

    return {name: str(build_tiny_checkpoint(tmp_path_factory.mktemp(name), seed=i + 7, **overrides))
            for i, (name, overrides) in enumerate(CHECKPOINTS.items())}


@pytest.fixture(scope="module")
def references(checkpoints) -> dict[str, tuple[list, int]]:
    """Per checkpoint: the single-rank outputs and weight bytes."""
    refs = {}
    for name, path in checkpoints.items():
        llm = LLM(path, **ENGINE_KWARGS)
        outputs = run_workload(llm)
        stats = llm.llm_engine.get_stats()
        # The workload really exercises what it claims to.
        assert stats.num_preemptions_total > 0 and stats.prefix_cache_hits_total > 0
        [rank_stats] = llm.llm_engine.engine_core.executor.collective_rpc("runtime_stats")
        refs[name] = (outputs, rank_stats["weight_bytes"])
        llm.llm_engine.engine_core.shutdown()
    return refs


@pytest.mark.parametrize("checkpoint,tp,pp,extra", [
    ("kv1_tied", 2, 1, dict(async_scheduling=True)),  # 1 KV head on 2 ranks: replicated
    ("kv2", 1, 2, {}),
    ("kv2", 2, 2, {}),
    ("kv1_tied", 2, 2, {}),  # the tied LM head on the last stage loads the embedding's tensor
])
def test_parallel_equals_single_rank(checkpoints, references, checkpoint: str, tp: int, pp: int, extra: dict) -> None:
    llm = LLM(checkpoints[checkpoint], tensor_parallel_size=tp, pipeline_parallel_size=pp, **ENGINE_KWARGS, **extra)
    try:
        assert llm.llm_engine.config.parallel_config.distributed_executor_backend == "mp"
        outputs = run_workload(llm)
        stats = llm.llm_engine.get_stats()
        batch_queue = llm.llm_engine.engine_core.batch_queue
        # With P stages, P batches were really in flight at once (not one at a time).
        assert (batch_queue.max_depth_reached if batch_queue is not None else 1) == pp
        per_rank = llm.llm_engine.engine_core.executor.collective_rpc("runtime_stats")
        # One batch-1 step's collectives, timed by every rank at once (the benchmarks' floor).
        collectives_ms = llm.llm_engine.engine_core.executor.collective_rpc("time_step_collectives")
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert stats.num_preemptions_total > 0 and stats.prefix_cache_hits_total > 0
    ref_outputs, ref_weight_bytes = references[checkpoint]
    assert_same(ref_outputs, outputs)
    # Every rank holds its 1/tp share of the weights (plus small replicated norms; a stage holds
    # fewer layers, but a tied LM head on the last stage repeats the embedding) and ran every
    # step, eagerly on CPU: prefill chunks and decode-only steps.
    assert [s["rank"] for s in per_rank] == list(range(tp * pp))
    assert all(ms > 0 for ms in collectives_ms) if tp > 1 else collectives_ms == [0.0] * pp
    for s in per_rank:
        assert s["weight_bytes"] < ref_weight_bytes / tp * 1.1
        assert s["forward_counts"]["graph"] == 0
        assert s["forward_counts"]["eager_prefill"] > 0 and s["forward_counts"]["eager_decode"] > 0


def test_phi3_pipeline_stages_equal_single_rank(checkpoint_factory) -> None:
    """Phi-3 (fused qkv / gate_up tensors in the checkpoint) split over two pipeline stages:
    each stage loads only its layers, and the outputs equal the single-rank engine's."""
    assert_equals_single_rank(checkpoint_factory("phi3"), pipeline_parallel_size=2)
