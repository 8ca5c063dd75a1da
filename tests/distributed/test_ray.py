"""TP=2 over Ray equals TP=1: a local Ray cluster with two worker nodes of one CPU each, so
the two ranks are placed on different nodes and meet over torch.distributed (gloo/TCP)."""

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


def test_tp2_over_ray_equals_tp1(cluster, checkpoint: str) -> None:
    ref_llm = LLM(checkpoint, **ENGINE_KWARGS)
    reference = run_workload(ref_llm)
    ref_llm.llm_engine.engine_core.shutdown()
    llm = LLM(checkpoint, tensor_parallel_size=2, distributed_executor_backend="ray", **ENGINE_KWARGS)
    try:
        executor = llm.llm_engine.engine_core.executor
        assert len(set(executor.node_ids)) == 2  # one rank per node
        outputs = run_workload(llm)
    finally:
        llm.llm_engine.engine_core.shutdown()
    assert_same(reference, outputs)
