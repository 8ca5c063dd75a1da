"""TP=2 and PP=2 over Ray equal TP=1: a local Ray cluster with two worker nodes of one CPU
each, so the two ranks are placed on different nodes and meet over torch.distributed
(gloo/TCP). The PP engine finds the cluster through RAY_ADDRESS alone."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'); the Ray executor test needs it")

from pagedlm import LLM  # noqa: E402

from .parallel_helpers import ENGINE_KWARGS, assert_same, run_workload  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 << 20})
    for _ in range(2):
        c.add_node(num_cpus=1, object_store_memory=100 << 20)
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("ray"), seed=11, num_key_value_heads=1))


@pytest.fixture(scope="module")
def reference(checkpoint: str) -> list:
    ref_llm = LLM(checkpoint, **ENGINE_KWARGS)
    try:
        return run_workload(ref_llm)
    finally:
        ref_llm.llm_engine.engine_core.shutdown()


def test_tp2_over_ray_equals_tp1(cluster, checkpoint: str, reference: list) -> None:
    llm = LLM(checkpoint, tensor_parallel_size=2, distributed_executor_backend="ray", **ENGINE_KWARGS)
    try:
        executor = llm.llm_engine.engine_core.executor
        assert len(set(executor.node_ids)) == 2  # one rank per node
        outputs = run_workload(llm)
        # the introspection calls reach every actor, as they reach worker processes
        stats = executor.collective_rpc("runtime_stats")
        assert [s["rank"] for s in stats] == [0, 1] and all(sum(s["forward_counts"].values()) > 0 for s in stats)
        assert executor.collective_rpc("expert_layout") == [{}, {}]  # a dense model
        with pytest.raises(ValueError, match="unknown worker call"):
            executor.collective_rpc("execute_model")
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert_same(reference, outputs)


def test_pp2_joins_the_cluster_ray_address_names(cluster, checkpoint: str, reference: list,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Not connected to Ray, the engine joins the cluster RAY_ADDRESS names (a local one of
    its own would be a single node); two pipeline stages on two nodes, two batches in flight."""
    ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    llm = LLM(checkpoint, pipeline_parallel_size=2, distributed_executor_backend="ray", **ENGINE_KWARGS)
    try:
        executor = llm.llm_engine.engine_core.executor
        assert executor._started_ray and len(set(executor.node_ids)) == 2
        outputs = run_workload(llm)
        assert llm.llm_engine.engine_core.batch_queue.max_depth_reached == 2
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert not ray.is_initialized()  # it disconnected from the cluster it joined
    assert_same(reference, outputs)
