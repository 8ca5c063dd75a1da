"""Expert parallelism (``enable_expert_parallel``) on CPU worker processes (gloo): at TP=2 each
rank holds a contiguous run of whole experts (vLLM's linear placement) instead of half of every
expert's intermediate dim, computes only the routed slots of its own experts, and the MoE
block's all-reduce sums the two shares. Greedy ids and logprobs equal the single rank's and
TP=2 without expert parallelism's on the shared workload (chunked prefill, prefix-cache hits,
preemption). Checkpoints: Qwen2-MoE with 8 experts (a TP-sharded shared expert, a dense layer)
Mixtral with 5 (3 + 2: the uneven split) and gpt-oss with 4 (expert biases)."""

from __future__ import annotations

import pytest

from pagedlm import LLM

from .parallel_helpers import ENGINE_KWARGS, assert_same, run_workload

CHECKPOINTS = {
    "qwen2_moe_8": ("Qwen2MoeForCausalLM", dict(num_hidden_layers=3, num_experts=8, num_experts_per_tok=2,
                                                moe_intermediate_size=32, shared_expert_intermediate_size=48,
                                                mlp_only_layers=[1], norm_topk_prob=False)),
    "mixtral_5": ("MixtralForCausalLM", dict(num_local_experts=5, num_experts_per_tok=2, sliding_window=None)),
    # Per-expert biases on both projections: each expert's down bias is added once, by its owner.
    "gpt_oss_4": ("GptOssForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=32,
                                            head_dim=16, sliding_window=8, swiglu_limit=1.0)),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    from pagedlm.demo import build_tiny_checkpoint

    paths = {}
    for seed, (name, (arch, overrides)) in enumerate(CHECKPOINTS.items(), start=31):
        paths[name] = str(build_tiny_checkpoint(tmp_path_factory.mktemp(name), arch, seed=seed, **overrides))
    return paths


def _run(path: str, **kwargs) -> tuple[list, list[dict]]:
    """The workload's outputs and each rank's MoE layout (Worker.expert_layout)."""
    llm = LLM(path, **ENGINE_KWARGS, **kwargs)
    try:
        outputs = run_workload(llm)
        layouts = llm.llm_engine.engine_core.executor.collective_rpc("expert_layout")
    finally:
        llm.llm_engine.engine_core.shutdown()
    return outputs, layouts


@pytest.fixture(scope="module")
def single_rank(checkpoints) -> dict[str, tuple[list, list[dict]]]:
    return {name: _run(path) for name, path in checkpoints.items()}


@pytest.mark.parametrize("name,experts,split", [("qwen2_moe_8", 8, [4, 4]), ("mixtral_5", 5, [3, 2]),
                                                ("gpt_oss_4", 4, [2, 2])])
def test_tp2_expert_parallel_equals_tp1(checkpoints, single_rank, name: str, experts: int, split: list[int]) -> None:
    outputs, layouts = _run(checkpoints[name], tensor_parallel_size=2, enable_expert_parallel=True)
    reference, [single_layout] = single_rank[name]
    assert_same(reference, outputs)
    # Each rank really holds only its experts, whole: rank 0 the first run, rank 1 the rest.
    full_w13 = next(iter(single_layout.values()))["w13"]
    assert layouts[0].keys() == single_layout.keys() and single_layout
    for rank, layout in enumerate(layouts):
        start = sum(split[:rank])
        for layer in layout.values():
            assert layer["experts"] == list(range(start, start + split[rank]))
            assert layer["w13"] == [split[rank]] + full_w13[1:]  # the intermediate dim is not split
            assert layer["w2"][0] == split[rank]


def test_tp2_expert_parallel_equals_tp2_tensor_split(checkpoints, single_rank) -> None:
    """The same engine without the option splits every expert's intermediate dim instead."""
    path = checkpoints["qwen2_moe_8"]
    ep_outputs, _ = _run(path, tensor_parallel_size=2, enable_expert_parallel=True)
    tp_outputs, layouts = _run(path, tensor_parallel_size=2)
    _, [single_layout] = single_rank["qwen2_moe_8"]
    full_w13 = next(iter(single_layout.values()))["w13"]
    for layout in layouts:
        for layer in layout.values():
            assert layer["experts"] == list(range(8)) and layer["w13"] == [8, full_w13[1] // 2, full_w13[2]]
    assert_same(tp_outputs, ep_outputs)


def test_expert_parallel_at_tp1_is_a_no_op(checkpoints, single_rank) -> None:
    outputs, [layout] = _run(checkpoints["mixtral_5"], enable_expert_parallel=True)
    reference, [single_layout] = single_rank["mixtral_5"]
    assert layout == single_layout
    assert_same(reference, outputs, tol=1e-6)
