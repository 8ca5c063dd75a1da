"""Pieces of the added architectures checked on their own: RoPE tables against
transformers' formulas, the expert weight loader (with a tensor-parallel shard), GPT-2's
legacy checkpoint names, and the settings that are refused rather than ignored."""

from __future__ import annotations

import pytest
import torch

from pagedlm.layers.rotary import compute_cos_sin_cache
from pagedlm.models.llama import rope_settings

YARN = [
    {"rope_type": "yarn", "factor": 4.0, "beta_fast": 8.0, "beta_slow": 1.0, "original_max_position_embeddings": 32},
    {"rope_type": "yarn", "factor": 8.0, "mscale": 1.5, "mscale_all_dim": 0.5, "original_max_position_embeddings": 64},
    {"rope_type": "yarn", "factor": 2.0, "attention_factor": 0.8, "truncate": False,
     "original_max_position_embeddings": 128},
]
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 4.0],
            "long_factor": [1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0], "original_max_position_embeddings": 64}


def hf_table(config, max_position: int, seq_len: int | None = None) -> torch.Tensor:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config, "cpu", seq_len=seq_len)
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float64), inv_freq.double())
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1) * attention_factor


def ours(config, max_position: int) -> torch.Tensor:
    base, rope_type, params, original_max = rope_settings(config)
    return compute_cos_sin_cache(16, max_position, base, rope_type, params, original_max,
                                 config.max_position_embeddings)


@pytest.mark.parametrize("scaling", YARN)
def test_yarn_table_matches_transformers(scaling):
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=512,
                         rope_scaling=dict(scaling), rope_theta=10000.0)
    expected = hf_table(config, 256)
    got = ours(config, 256)
    assert torch.allclose(got.double(), expected, atol=1e-5)
    assert not torch.allclose(got, compute_cos_sin_cache(16, 256, 10000.0, "default", {}, 512), atol=1e-3)


@pytest.mark.parametrize("max_model_len, long", [(64, False), (200, True)])
def test_longrope_picks_short_or_long_factors_by_max_model_len(max_model_len, long):
    from transformers import Phi3Config

    config = Phi3Config(hidden_size=64, num_attention_heads=4, max_position_embeddings=256,
                        original_max_position_embeddings=64, rope_scaling=dict(LONGROPE), pad_token_id=0)
    expected = hf_table(config, max_model_len, seq_len=max_model_len if long else None)
    assert torch.allclose(ours(config, max_model_len).double(), expected, atol=1e-5)


def test_su_is_longrope():
    params = {**LONGROPE, "rope_type": "su"}
    su = compute_cos_sin_cache(16, 64, 10000.0, "su", params, 64, 256)
    assert torch.equal(su, compute_cos_sin_cache(16, 64, 10000.0, "longrope", LONGROPE, 64, 256))


def test_partial_rotary_is_refused():
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        compute_cos_sin_cache(16, 64, 10000.0, "default", {"partial_rotary_factor": 0.5}, 64)


@pytest.mark.parametrize("tp_rank", [0, 1])
def test_expert_loader_fills_stacked_slices_and_shards_the_intermediate_dim(monkeypatch, tp_rank):
    from pagedlm.layers.fused_moe import layer as moe_layer

    monkeypatch.setattr(moe_layer, "moe_tp_rank_size", lambda: (tp_rank, 2))
    moe = moe_layer.FusedMoE(num_experts=3, top_k=2, hidden_size=8, intermediate_size=12, renormalize=True)
    assert moe.w13_weight.shape == (3, 12, 8) and moe.w2_weight.shape == (3, 8, 6)
    w1, w3, w2 = torch.randn(12, 8), torch.randn(12, 8), torch.randn(8, 12)
    for shard, w in (("w1", w1), ("w3", w3), ("w2", w2)):
        param = moe.w2_weight if shard == "w2" else moe.w13_weight
        param.weight_loader(param, w, (1, shard))
    rows = slice(6 * tp_rank, 6 * tp_rank + 6)
    assert torch.equal(moe.w13_weight[1, :6], w1[rows])
    assert torch.equal(moe.w13_weight[1, 6:], w3[rows])
    assert torch.equal(moe.w2_weight[1], w2[:, rows])


def test_expert_params_mapping_names():
    from pagedlm.layers.fused_moe import FusedMoE

    mapping = FusedMoE.expert_params_mapping(12, "gate_proj", "down_proj", "up_proj")
    by_fragment = {frag: (target, shard) for frag, target, shard in mapping}
    assert by_fragment["experts.11.up_proj."] == ("experts.w13_", (11, "w3"))
    assert by_fragment["experts.1.down_proj."] == ("experts.w2_", (1, "w2"))
    # experts.1.* must not also claim experts.11.* names
    assert not any(frag in "mlp.experts.11.gate_proj.weight" for frag in by_fragment if frag.startswith("experts.1."))


def test_gpt2_loads_legacy_checkpoint_names(checkpoint_factory):
    """Original GPT-2 checkpoints: no ``transformer.`` prefix, causal-mask buffers present."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from pagedlm.models.gpt2 import GPT2LMHeadModel

    path = checkpoint_factory("gpt2")
    state = load_file(f"{path}/model.safetensors")
    legacy = [(name.removeprefix("transformer."), t) for name, t in state.items()]
    legacy.append(("h.0.attn.bias", torch.ones(1, 1, 8, 8)))
    legacy.append(("h.0.attn.masked_bias", torch.tensor(-1e4)))
    model = GPT2LMHeadModel(AutoConfig.from_pretrained(path), max_position=64)
    loaded = model.load_weights(legacy)
    assert loaded == {n for n, _ in model.named_parameters()}
    c_attn = state["transformer.h.1.attn.c_attn.weight"]
    assert torch.equal(model.transformer.h[1].attn.c_attn.weight, c_attn.t())  # Conv1D [in, out] transposed


@pytest.mark.parametrize("name, override, message", [
    ("gemma2", dict(use_bidirectional_attention=True), "bidirectional"),
    ("gemma2", dict(hidden_activation="relu"), "relu"),
    ("qwen3_moe", dict(use_sliding_window=True), "use_sliding_window"),
    ("mixtral", dict(hidden_act="gelu"), "gelu"),
    ("gpt2", dict(add_cross_attention=True), "cross-attention"),
])
def test_unsupported_settings_are_refused(checkpoint_factory, name, override, message):
    from transformers import AutoConfig

    from pagedlm.models.registry import resolve_model_class

    config = AutoConfig.from_pretrained(checkpoint_factory(name))
    for key, value in override.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=message):
        resolve_model_class(config.architectures)(config, max_position=64)
