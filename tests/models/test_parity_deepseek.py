"""DeepSeek-V2 / V3 (multi-head latent attention, DeepSeek MoE): greedy token ids and logprobs
equal transformers (float32, CPU) on tiny random checkpoints, plainly and with chunked
prefill over 4-token blocks; the routing against transformers' routers; the decompressed KV
cache's size; what the model file refuses. Quantized checkpoints: test_quantized_deepseek.py."""

from __future__ import annotations

import json

import pytest

from models.arch_parity_helpers import check_plain_and_chunked, checkpoint_getter

_MLA = dict(kv_lora_rank=24, qk_nope_head_dim=16, qk_rope_head_dim=8, pad_token_id=0)
# name -> (architecture, config overrides)
CHECKPOINTS = {
    # V3: q through the q_lora_rank bottleneck, YaRN past its 32-token original context with
    # mscale != mscale_all_dim (cos / sin and the softmax scale both change), top-3 of 8 within
    # the best 2 of 4 groups with a (random) correction bias, routed scale 2.5, layer 0 dense,
    # a shared expert; v_head_dim 12 < 16 + 8, so V is zero-padded in the cache; the
    # checkpoint carries a multi-token-prediction layer (not loaded).
    "deepseek_v3": ("DeepseekV3ForCausalLM", dict(
        _MLA, num_hidden_layers=2, n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
        n_shared_experts=1, first_k_dense_replace=1, n_group=4, topk_group=2, routed_scaling_factor=2.5,
        norm_topk_prob=True, q_lora_rank=32, v_head_dim=12, num_key_value_heads=4, max_position_embeddings=128,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 32, "mscale": 0.8, "mscale_all_dim": 1.2,
                         "beta_fast": 32, "beta_slow": 1})),
    # V3 with RoPE on halves (rope_interleave False), biases on q_a / kv_a / o, ungrouped
    # routing without renormalisation, every layer MoE.
    "deepseek_v3_neox": ("DeepseekV3ForCausalLM", dict(
        _MLA, num_hidden_layers=2, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        n_shared_experts=1, first_k_dense_replace=0, n_group=1, topk_group=1, norm_topk_prob=False,
        routed_scaling_factor=1.5, q_lora_rank=32, v_head_dim=24, num_key_value_heads=4, rope_interleave=False,
        attention_bias=True)),
    # V2-Lite style: plain q_proj (q_lora_rank None), softmax greedy top-2 of 8 un-normalised,
    # two shared experts; v_head_dim 32 > 16 + 8, so Q and K are zero-padded instead.
    "deepseek_v2_lite": ("DeepseekV2ForCausalLM", dict(
        _MLA, num_hidden_layers=2, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
        n_shared_experts=2, first_k_dense_replace=0, topk_method="greedy", routed_scaling_factor=1.5,
        q_lora_rank=None, v_head_dim=32, num_key_value_heads=4)),
    # V2: softmax top-3 of 8 within the best 2 of 4 groups (each scored by its best expert),
    # q_lora_rank set, layer 0 dense.
    "deepseek_v2_grouped": ("DeepseekV2ForCausalLM", dict(
        _MLA, num_hidden_layers=2, n_routed_experts=8, num_experts_per_tok=3, moe_intermediate_size=32,
        n_shared_experts=1, first_k_dense_replace=1, topk_method="group_limited_greedy", n_group=4, topk_group=2,
        q_lora_rank=32, v_head_dim=16, num_key_value_heads=4)),
}


def add_mtp_layer(path: str) -> None:
    """Append a multi-token-prediction layer as DeepSeek-V3 checkpoints hold it: layer
    ``num_hidden_layers`` with its own projections (eh_proj, enorm, hnorm, shared_head)."""
    from safetensors.torch import load_file, save_file

    config = json.loads(open(f"{path}/config.json").read())
    n = config["num_hidden_layers"]
    tensors = load_file(f"{path}/model.safetensors")
    last = f"model.layers.{n - 1}."
    for name, tensor in list(tensors.items()):
        if name.startswith(last):
            tensors[f"model.layers.{n}." + name[len(last):]] = tensor.clone()
    hidden = config["hidden_size"]
    tensors[f"model.layers.{n}.eh_proj.weight"] = tensors[f"{last}input_layernorm.weight"].new_ones(hidden, 2 * hidden)
    for norm in ("enorm", "hnorm"):
        tensors[f"model.layers.{n}.{norm}.weight"] = tensors[f"{last}input_layernorm.weight"].clone()
    tensors[f"model.layers.{n}.shared_head.head.weight"] = tensors["lm_head.weight"].clone()
    save_file(tensors, f"{path}/model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    get = checkpoint_getter(tmp_path_factory, CHECKPOINTS, 900)
    done: set[str] = set()

    def checkpoint_with_mtp(name: str) -> str:
        path = get(name)
        if name == "deepseek_v3" and name not in done:
            add_mtp_layer(path)
            done.add(name)
        return path

    return checkpoint_with_mtp


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_parity(checkpoint, name):
    check_plain_and_chunked(checkpoint(name))


def _sorted(weights, ids):
    import torch

    order = torch.argsort(ids, dim=-1)
    return weights.gather(1, order), ids.gather(1, order)


@pytest.mark.parametrize("topk_method", ["greedy", "group_limited_greedy"])
def test_softmax_routing_matches_deepseek_v2_router(topk_method):
    """DeepSeek-V2's router (transformers) against select_experts as DeepseekV2ForCausalLM sets
    it up; the group limit changes the choice."""
    import torch
    from transformers import DeepseekV2Config
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import DeepseekV2TopkRouter

    from pagedlm.layers.fused_moe.reference import select_experts

    config = DeepseekV2Config(hidden_size=16, num_attention_heads=4, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
                              routed_scaling_factor=1.5, topk_method=topk_method)
    router = DeepseekV2TopkRouter(config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        router.weight.copy_(torch.randn(8, 16, generator=gen))
    hidden = torch.randn(64, 16, generator=gen)
    logits, ref_w, ref_ids = router(hidden)
    grouped = dict(num_expert_group=4, topk_group=2) if topk_method == "group_limited_greedy" else {}
    weights, ids = select_experts(logits, 3, False, routed_scaling_factor=1.5, **grouped)
    ref_w, ref_ids = _sorted(ref_w, ref_ids)
    weights, ids = _sorted(weights, ids)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(weights, ref_w)
    if grouped:
        assert not torch.equal(_sorted(*select_experts(logits, 3, False))[1], ids)


def test_kv_cache_holds_decompressed_heads(checkpoint):
    """One K and one V per query head, max(qk_nope + qk_rope, v_head_dim) wide: the runner's
    cache tensors and the per-block bytes the block count is sized from agree."""
    from transformers import DeepseekV2Config, DeepseekV3Config

    from pagedlm import LLM
    from pagedlm.config import attention_shape
    from pagedlm.worker import memory

    assert attention_shape(DeepseekV3Config()) == (128, 128, 192)  # V3 / R1: 128 heads, 128 + 64 (v 128)
    assert attention_shape(DeepseekV2Config(num_attention_heads=16, q_lora_rank=None)) == (16, 16, 192)  # V2-Lite
    for name, width in (("deepseek_v3", 24), ("deepseek_v2_lite", 32)):
        llm = LLM(checkpoint(name), device="cpu", max_model_len=64, kv_cache_memory_bytes=1 << 20)
        runner = llm.llm_engine.engine_core.runner
        layers = CHECKPOINTS[name][1]["num_hidden_layers"]
        assert len(runner.kv_caches) == layers
        assert {tuple(c.shape[3:]) for c in runner.kv_caches} == {(4, width)}  # 4 heads
        per_block = 2 * layers * runner.block_size * 4 * width * 4  # K and V, float32
        assert memory.kv_cache_bytes_per_block(runner.config) == per_block
        assert sum(c.numel() * c.element_size() for c in runner.kv_caches) == runner.num_blocks * per_block


def _copy_with_config(src: str, dst, **changes) -> str:
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return str(dst)


@pytest.mark.parametrize("changes,match", [
    (dict(topk_method="greedy"), "noaux_tc"),
    (dict(scoring_func="softmax"), "sigmoid"),
    (dict(n_group=3), "n_group"),
    (dict(hidden_act="gelu"), "hidden_act"),
])
def test_unsupported_configs_are_refused(checkpoint, tmp_path, changes, match):
    from pagedlm import LLM

    path = _copy_with_config(checkpoint("deepseek_v3_neox"), tmp_path / "ckpt", **changes)
    with pytest.raises(ValueError, match=match):
        LLM(path, device="cpu", max_model_len=64)


def test_v2_refuses_other_routing(checkpoint, tmp_path):
    from pagedlm import LLM

    path = _copy_with_config(checkpoint("deepseek_v2_lite"), tmp_path / "ckpt", topk_method="noaux_tc")
    with pytest.raises(ValueError, match="group_limited_greedy"):
        LLM(path, device="cpu", max_model_len=64)


def test_pipeline_parallel_is_refused(checkpoint):
    from pagedlm import LLM

    with pytest.raises(ValueError, match="pipeline parallelism"):
        LLM(checkpoint("deepseek_v2_lite"), device="cpu", max_model_len=64, pipeline_parallel_size=2)
