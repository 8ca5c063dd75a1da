"""Quantized checkpoints of the decoders built on ``CausalLMWrapper`` with their own layer names
(StarCoder2's c_fc / c_proj with biases, Phi-1/2's dense / fc1 / fc2 beside a parallel MLP,
Command-R's and Command-R7B's Llama-named projections under LayerNorms, GPT-J's out_proj /
fc_in / fc_out), and of the Llama-layout decoders with LayerNorms (StableLM with its parallel
residual, Nemotron's ungated MLP, OLMo's parameter-free norms and clip_qkv), StarCoder 1
(GPT-BigCode: c_attn fused in the checkpoint, [q | k | v] with multi-query and per head
without it, split in packed units), GPT-NeoX (query_key_value per head) and Falcon
(query_key_value multi-query, per head, or in K / V groups): every projection but the LM head
runs its linear method. Against transformers running the dequantized weights (float32, CPU):
greedy ids and top-k logprobs at the parity tolerance for AWQ and GPTQ, and at
test_quant_parity's tolerance for fp8 with per-token activations (the layers quantize their own
inputs: the LayerNorms emit no activation codes)."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM

from models.test_parity_archs_other import CHECKPOINTS as OTHER
from models.test_parity_archs_round3 import CHECKPOINTS as ROUND3
from models.test_parity_archs_round4 import CHECKPOINTS as ROUND4
from quant_helpers import FP8
from quant_parity_helpers import assert_fp8_token_parity, assert_wna16_parity

CHECKPOINTS = ({name: OTHER[name] for name in ("starcoder2", "cohere", "cohere2", "gptj")}
               | {name: ROUND3[name] for name in ("phi", "olmo")}
               | {name: ROUND4[name] for name in ("stablelm_par", "nemotron")}
               | {name: OTHER[name] for name in ("gpt_bigcode", "gpt_bigcode_mha", "gpt_neox")}
               | {name: ROUND3[name] for name in ("falcon_mq", "falcon_new", "falcon_seq")})
# each architecture's (attention output, MLP output) projection, which the test finds quantized
PROJECTIONS = {"starcoder2": ("model.layers.0.self_attn.o_proj", "model.layers.0.mlp.c_proj"),
               "phi": ("model.layers.0.self_attn.dense", "model.layers.0.mlp.fc2"),
               "cohere": ("model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"),
               "cohere2": ("model.layers.1.self_attn.o_proj", "model.layers.1.mlp.down_proj"),
               "gptj": ("transformer.h.0.attn.out_proj", "transformer.h.0.mlp.fc_out"),
               "olmo": ("model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"),
               "stablelm_par": ("model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"),
               "nemotron": ("model.layers.0.self_attn.o_proj", "model.layers.0.mlp.down_proj"),
               "gpt_bigcode": ("transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj"),
               "gpt_bigcode_mha": ("transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj"),
               "gpt_neox": ("gpt_neox.layers.0.attention.query_key_value", "gpt_neox.layers.0.mlp.dense_4h_to_h"),
               **{name: ("transformer.h.0.self_attention.query_key_value", "transformer.h.0.mlp.dense_4h_to_h")
                  for name in ("falcon_mq", "falcon_new", "falcon_seq")}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """name -> its tiny checkpoint, each with a fixed seed (701, 702, ... in CHECKPOINTS' order,
    whichever tests run): how many activations sit on an fp8 rounding boundary depends on the
    weights (test_quant_parity's FLIP_TOL)."""
    from pagedlm.demo import build_tiny_checkpoint

    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            arch, overrides = CHECKPOINTS[name]
            seed = 701 + list(CHECKPOINTS).index(name)
            built[name] = str(build_tiny_checkpoint(tmp_path_factory.mktemp(name), arch, seed=seed, **overrides))
        return built[name]

    return get


def projections(llm: LLM, name: str) -> list[torch.nn.Module]:
    model = llm.llm_engine.engine_core.runner.model
    return [model.get_submodule(p) for p in PROJECTIONS[name]]


@pytest.mark.parametrize("name,fmt,options", [
    ("starcoder2", "awq", dict(group_size=16)),
    ("phi", "awq", dict(group_size=32)),
    ("cohere", "gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
    ("cohere2", "awq", dict(group_size=16)),
    ("gptj", "gptq", dict(bits=8, group_size=32, sym=True)),
    ("olmo", "awq", dict(group_size=16)),
    ("stablelm_par", "gptq", dict(bits=4, group_size=16, sym=True, desc_act=False)),
    ("nemotron", "awq", dict(group_size=16)),
    ("gpt_bigcode", "gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
    ("gpt_bigcode_mha", "awq", dict(group_size=16)),
    ("gpt_neox", "gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
    ("falcon_mq", "awq", dict(group_size=16)),
    ("falcon_new", "gptq", dict(bits=4, group_size=16, sym=False, desc_act=True)),
    ("falcon_seq", "awq", dict(group_size=16)),
])
def test_wna16_matches_transformers_on_dequantized_weights(checkpoint, tmp_path, name, fmt, options):
    llm = assert_wna16_parity(checkpoint(name), tmp_path, fmt, **options)
    assert all(layer.qweight.dtype == torch.int32 for layer in projections(llm, name))


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_fp8_per_token(checkpoint, tmp_path, name):
    llm = assert_fp8_token_parity(checkpoint(name), tmp_path)
    assert all(layer.weight.dtype == FP8 for layer in projections(llm, name))
