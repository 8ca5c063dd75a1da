"""Shared fixtures: tiny checkpoints built locally (no download ever)."""

from __future__ import annotations

import logging
import os

import pytest

# Kernel choices are timed afresh in every test run, never read from a user's tuning cache
# (tests/unit/test_tuning_cache.py turns it on for itself, in a temporary directory).
os.environ.setdefault("PAGEDLM_TUNING_CACHE", "0")

# arch name -> config overrides exercising each family member's distinctive parts
CHECKPOINTS = {
    "llama": ("LlamaForCausalLM", dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                                       rope_theta=10000.0)),
    "llama_linear_tied": ("LlamaForCausalLM", dict(rope_scaling={"rope_type": "linear", "factor": 2.0},
                                                    tie_word_embeddings=True)),
    "mistral": ("MistralForCausalLM", dict(sliding_window=None)),
    "qwen2": ("Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3_sharded": ("Qwen3ForCausalLM", dict()),
    # Sliding windows shorter than most prompts, caps that bite, query_pre_attn_scalar != head_dim.
    "gemma2": ("Gemma2ForCausalLM", dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                                         attn_logit_softcapping=2.0, final_logit_softcapping=3.0,
                                         attn_implementation="eager")),
    "gemma3": ("Gemma3ForCausalLM", dict(head_dim=16, query_pre_attn_scalar=24, sliding_window=8,
                                         sliding_window_pattern=2, final_logit_softcapping=4.0,
                                         rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0,
                                                                             "rope_theta": 10000.0},
                                                          "sliding_attention": {"rope_type": "default",
                                                                                "rope_theta": 100.0}})),
    "phi3": ("Phi3ForCausalLM", dict(sliding_window=24, pad_token_id=0)),
    # LongRoPE: head_dim 16 -> 8 factors each; original context 48 of 512.
    "phi3_longrope": ("Phi3ForCausalLM", dict(
        original_max_position_embeddings=48, pad_token_id=0,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0],
                      "long_factor": [1.0, 2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0]})),
    "mixtral": ("MixtralForCausalLM", dict(num_local_experts=6, num_experts_per_tok=2, sliding_window=24)),
    # Layer 1 dense (mlp_only_layers), a shared expert, un-normalised top-k.
    "qwen2_moe": ("Qwen2MoeForCausalLM", dict(num_hidden_layers=3, num_experts=6, num_experts_per_tok=2,
                                              moe_intermediate_size=32, shared_expert_intermediate_size=48,
                                              mlp_only_layers=[1], norm_topk_prob=False)),
    "qwen3_moe": ("Qwen3MoeForCausalLM", dict(head_dim=16, num_experts=8, num_experts_per_tok=3,
                                              moe_intermediate_size=32, norm_topk_prob=True)),
    # yarn: head_dim 16 over an original context of 32 puts the ramp inside the frequencies.
    "llama_yarn": ("LlamaForCausalLM", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "beta_fast": 8.0,
                                                          "beta_slow": 1.0, "original_max_position_embeddings": 32},
                                            rope_theta=10000.0)),
    "qwen2_yarn": ("Qwen2ForCausalLM", dict(rope_scaling={"rope_type": "yarn", "factor": 8.0, "mscale": 1.5,
                                                          "mscale_all_dim": 0.5, "original_max_position_embeddings": 64},
                                            tie_word_embeddings=True)),
    # num_key_value_heads only keeps the shared test config from claiming GQA (GPT-2 has none).
    "gpt2": ("GPT2LMHeadModel", dict(n_inner=96, activation_function="gelu_new", tie_word_embeddings=True,
                                     num_key_value_heads=4)),
}


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    from pagedlm.demo import build_tiny_checkpoint

    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            arch, overrides = CHECKPOINTS[name]
            shard = "60KB" if name.endswith("_sharded") else None
            path = tmp_path_factory.mktemp(name)
            build_tiny_checkpoint(path, arch, seed=len(built) + 1, max_shard_size=shard, **overrides)
            built[name] = str(path)
        return built[name]

    return get


@pytest.fixture(scope="session")
def seeded_checkpoint(tmp_path_factory):
    """build(name, seed): a tiny checkpoint with a fixed seed, for tests whose assertions hold
    for particular weights (checkpoint_factory's seed follows the session's build order)."""
    from pagedlm.demo import build_tiny_checkpoint

    def build(name: str, seed: int) -> str:
        arch, overrides = CHECKPOINTS[name]
        path = tmp_path_factory.mktemp(f"{name}_seed{seed}")
        build_tiny_checkpoint(path, arch, seed=seed, **overrides)
        return str(path)

    return build


@pytest.fixture(scope="session")
def llama_checkpoint(checkpoint_factory) -> str:
    return checkpoint_factory("llama")


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory):
    """pagedlm.demo's tiny checkpoint as built by default (seed 0)."""
    from pagedlm.demo import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def demo_hf_model(demo_checkpoint):
    """demo_checkpoint through transformers in float32: an independent reference for logits."""
    import torch
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(str(demo_checkpoint), torch_dtype=torch.float32).eval()


@pytest.fixture
def pagedlm_warnings():
    """The messages pagedlm's loggers emit at WARNING or above during the test (its logger
    has its own handler, so pytest's caplog does not see them)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("pagedlm")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
