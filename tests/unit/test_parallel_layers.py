"""Tensor-parallel shards without processes: each rank's weight loader keeps exactly its
slice of every checkpoint tensor (KV heads replicated when ranks outnumber them, the vocab
padded), stages split the layers contiguously, bad world shapes are refused up front, and
the per-step messages survive the msgpack round trip."""

from __future__ import annotations

import pytest
import torch

from pagedlm.config import ConfigError
from pagedlm.engine.messages import CachedRequestData, LogprobsLists, ModelRunnerOutput, NewRequestData, \
    SchedulerOutput
from pagedlm.executor import serial
from pagedlm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedlm.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from pagedlm.sampling_params import SamplingParams
from pagedlm.worker.distributed import (
    destroy_distributed_environment,
    kv_head_shard,
    pp_layer_range,
    set_parallel_state_for_tests,
)


@pytest.fixture(autouse=True)
def single_rank_after():
    yield
    destroy_distributed_environment()


def per_rank(tp: int, build, load) -> list:
    layers = []
    for rank in range(tp):
        set_parallel_state_for_tests(rank, tp, 1)
        layer = build()
        load(layer)
        layers.append(layer)
    return layers


def test_qkv_shards_with_replicated_kv_heads() -> None:
    head_dim, hidden = 2, 6
    q, k, v = torch.randn(4 * head_dim, hidden), torch.randn(1 * head_dim, hidden), torch.randn(head_dim, hidden)

    def load(layer):
        for shard_id, t in (("q", q), ("k", k), ("v", v)):
            layer.weight.weight_loader(layer.weight, t, shard_id)

    ranks = per_rank(2, lambda: QKVParallelLinear(hidden, head_dim, 4, 1), load)
    for rank, layer in enumerate(ranks):
        assert (layer.q_size, layer.kv_size) == (2 * head_dim, head_dim)
        w_q, w_k, w_v = layer.weight.split([layer.q_size, layer.kv_size, layer.kv_size])
        assert torch.equal(w_q, q[rank * 4:(rank + 1) * 4])
        assert torch.equal(w_k, k) and torch.equal(w_v, v)  # the single KV head on both ranks


def test_merged_and_row_shards_reassemble() -> None:
    gate, up, down = torch.randn(8, 4), torch.randn(8, 4), torch.randn(4, 8)

    def load_merged(layer):
        layer.weight.weight_loader(layer.weight, gate, 0)
        layer.weight.weight_loader(layer.weight, up, 1)

    merged = per_rank(2, lambda: MergedColumnParallelLinear(4, [8, 8]), load_merged)
    assert torch.equal(torch.cat([m.weight[:4] for m in merged]), gate)
    assert torch.equal(torch.cat([m.weight[4:] for m in merged]), up)
    rows = per_rank(2, lambda: RowParallelLinear(8, 4, bias=True),
                    lambda layer: (layer.weight.weight_loader(layer.weight, down),
                                   layer.bias.weight_loader(layer.bias, torch.ones(4))))
    assert torch.equal(torch.cat([r.weight for r in rows], dim=1), down)
    assert all(torch.equal(r.bias, torch.ones(4)) for r in rows)  # added once, after the all-reduce


def test_vocab_shards_pad_the_last_rank() -> None:
    table = torch.randn(7, 3)
    ranks = per_rank(2, lambda: VocabParallelEmbedding(7, 3), lambda e: e.weight.weight_loader(e.weight, table))
    assert [(e.vocab_start, e.vocab_end) for e in ranks] == [(0, 4), (4, 7)]
    assert torch.equal(ranks[0].weight, table[:4]) and torch.equal(ranks[1].weight[:3], table[4:])
    assert torch.equal(ranks[1].weight[3], torch.zeros(3))
    set_parallel_state_for_tests(0, 1, 1)
    head = ParallelLMHead(7, 3)
    head.weight.weight_loader(head.weight, table)
    assert head.compute_logits(torch.ones(1, 3)).shape == (1, 7)


def test_layer_split_and_kv_shards() -> None:
    assert [pp_layer_range(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [pp_layer_range(4, r, 4) for r in range(4)] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert [kv_head_shard(2, 4, r) for r in range(4)] == [(1, 0), (1, 0), (1, 1), (1, 1)]
    assert [kv_head_shard(8, 2, r) for r in range(2)] == [(4, 0), (4, 1)]
    with pytest.raises(ConfigError):
        kv_head_shard(3, 2, 0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(tensor_parallel_size=3), "num_attention_heads"),
    (dict(tensor_parallel_size=8), "num_attention_heads"),
    (dict(pipeline_parallel_size=3), "exceeds the model's 2 layers"),
    (dict(tensor_parallel_size=2, distributed_executor_backend="uni"), "needs 'mp' or 'ray'"),
    (dict(tensor_parallel_size=0), "positive integer"),
    (dict(distributed_executor_backend="threads"), "distributed_executor_backend must be one of"),
    (dict(pipeline_parallel_size=2, async_scheduling=True), "async_scheduling is not supported with pipeline"),
    (dict(pipeline_parallel_size=2, runner="pooling"), "pooling models do not support pipeline_parallel_size"),
])
def test_bad_world_shapes_are_refused(llama_checkpoint: str, kwargs: dict, match: str) -> None:
    from pagedlm import EngineArgs

    with pytest.raises(ConfigError, match=match):
        EngineArgs(llama_checkpoint, device="cpu", **kwargs).create_engine_config()


def test_default_backend(llama_checkpoint: str) -> None:
    from pagedlm import EngineArgs

    def backend(**kw) -> str:
        return EngineArgs(llama_checkpoint, device="cpu", **kw).create_engine_config().parallel_config \
            .distributed_executor_backend

    assert backend() == "uni" and backend(tensor_parallel_size=2) == "mp" and backend(pipeline_parallel_size=2) == "mp"
    # Pipeline stages overlap through the batch queue, not async scheduling.
    config = EngineArgs(llama_checkpoint, device="cpu", pipeline_parallel_size=2).create_engine_config()
    assert not config.scheduler_config.async_scheduling


def test_default_backend_on_cuda_is_ray_past_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's rule: worker processes while the world fits this host's GPUs, Ray beyond."""
    pytest.importorskip("ray")
    from pagedlm.config import resolve_parallel_config

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_parallel_config(1, 1, None, "cuda").distributed_executor_backend == "uni"
    assert resolve_parallel_config(2, 1, None, "cuda").distributed_executor_backend == "mp"
    assert resolve_parallel_config(2, 2, None, "cuda").distributed_executor_backend == "ray"
    with pytest.raises(ConfigError, match="use distributed_executor_backend='ray' to span hosts"):
        resolve_parallel_config(2, 2, "mp", "cuda")


def test_messages_round_trip() -> None:
    params = SamplingParams(temperature=0.7, seed=5, logit_bias={3: 1.5}, stop=["x"], min_tokens=2)
    params.all_stop_token_ids.add(2)  # filled in by the engine: must survive
    sched = SchedulerOutput([NewRequestData("a", [1, 2], [9], params, [0, 1], 1)], [CachedRequestData("b", [3], 5, [8])],
                            {"a": 2, "b": 1}, 3, {"c"}, {"d"})
    back = serial.decode_scheduler_output(serial.encode(sched))
    assert back == sched and back.scheduled_new_reqs[0].sampling_params.all_stop_token_ids == {2}
    out = ModelRunnerOutput(["a"], [[4]], {"a": LogprobsLists([[4, 1]], [[-0.5, -1.0]], [1])},
                            {"a": LogprobsLists([[2]], [[-2.0]], [3])}, request_errors={"a": "adapter gone"})
    assert serial.decode_runner_output(serial.encode(out)) == out


def test_every_rank_gets_the_smallest_block_count() -> None:
    """KV blocks: each rank sizes its own (local KV heads), all get the minimum, so one scheduler fits all."""
    from pagedlm.executor.base import Executor

    class Recording(Executor):
        def __init__(self) -> None:
            super().__init__(None)
            self.calls: list[tuple] = []

        def _rpc(self, method: str, *args: object) -> list:
            self.calls.append((method, *args))
            return {"determine_num_blocks": [10, 7, 9], "describe": ["a", "b", "c"]}.get(method, [None] * 3)

        execute_model = launch = take_output = sample_deferred = lambda *_: None

    executor = Recording()
    assert executor.initialize() == 7
    assert executor.calls == [("determine_num_blocks",), ("initialize_kv_cache", 7), ("warm_up",), ("describe",)]
    # a step method is no worker call: refused before any worker sees it
    with pytest.raises(ValueError, match="unknown worker call 'execute_model'"):
        executor.collective_rpc("execute_model")
    assert len(executor.calls) == 4
