"""More Llama-family architectures vLLM serves: greedy token ids and logprobs equal
transformers (float32, CPU) on tiny random checkpoints, plainly and in one stressed engine
that chunks prefills, preempts and serves the longest prompt again from the prefix cache.

Each tiny config sets its family's quirks to values that change the result (multipliers far
from 1, a NoPE layer, a window that only use_sliding_window may turn on), and
``test_quirks_bite`` switches each one off inside the engine to show the parity depends on it.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from models.arch_parity_helpers import checkpoint_getter
from models.test_parity import PROMPTS, hf_reference, check_close, run
from models.test_parity_archs import run_stressed

# name -> (architecture, config overrides)
CHECKPOINTS: dict[str, tuple[str, dict[str, Any]]] = {
    # head_dim 16: attention_multiplier 0.5 is twice 1/sqrt(16).
    "granite": ("GraniteForCausalLM", dict(embedding_multiplier=4.0, residual_multiplier=0.5,
                                           attention_multiplier=0.5, logits_scaling=2.5,
                                           tie_word_embeddings=True)),
    # Layer 0 without RoPE; a window of 8 that use_sliding_window=False leaves off.
    "smollm3": ("SmolLM3ForCausalLM", dict(no_rope_layers=[0, 1], sliding_window=8, use_sliding_window=False,
                                           tie_word_embeddings=True, pad_token_id=0)),
    "olmo2": ("Olmo2ForCausalLM", dict(pad_token_id=0)),
    # head_dim 32 over hidden 64 (Gemma's head_dim is not hidden / heads); tied head.
    "gemma": ("GemmaForCausalLM", dict(head_dim=32, hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True)),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Callable[[str], str]:
    return checkpoint_getter(tmp_path_factory, CHECKPOINTS, 11)


@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_parity(checkpoint, name):
    path = checkpoint(name)
    ref = hf_reference(path, PROMPTS, 10)
    _, outputs = run(path, PROMPTS, max_model_len=128, enable_prefix_caching=False)
    check_close(ref, outputs, PROMPTS)
    run_stressed(path, PROMPTS, ref)


def _drop_granite_multiplier(model: torch.nn.Module, which: str) -> None:
    if which == "embedding":
        model.model.embedding_multiplier = 1.0
    elif which == "residual":
        for layer in model.model.layers:
            layer.residual_multiplier = 1.0
    elif which == "attention":
        for attn in model.attention_layers():
            attn.scale = attn.head_dim**-0.5
    else:
        model.logits_scaling = 1.0


def _rope_on_every_layer(model: torch.nn.Module, _: str) -> None:
    rotary = next(layer.self_attn.rotary_emb for layer in model.model.layers if layer.self_attn.rotary_emb)
    for layer in model.model.layers:
        layer.self_attn.rotary_emb = rotary


def _window_on(model: torch.nn.Module, _: str) -> None:
    for attn in model.attention_layers():
        attn.sliding_window = 8


class _PerHeadRMSNorm(torch.nn.Module):
    """The Qwen3-style q / k norm: over each head, not over the whole projection."""

    def __init__(self, norm: torch.nn.Module, head_dim: int) -> None:
        super().__init__()
        self.norm, self.head_dim = norm, head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = x.float().view(x.shape[0], -1, self.head_dim)
        heads = heads * torch.rsqrt(heads.pow(2).mean(-1, keepdim=True) + self.norm.eps)
        return heads.view_as(x) * self.norm.weight


def _qk_norm_per_head(model: torch.nn.Module, _: str) -> None:
    for layer in model.model.layers:
        attn = layer.self_attn
        attn.q_norm = _PerHeadRMSNorm(attn.q_norm, attn.head_dim)
        attn.k_norm = _PerHeadRMSNorm(attn.k_norm, attn.head_dim)


def _post_norms_off(model: torch.nn.Module, _: str) -> None:
    for layer in model.model.layers:
        layer.post_attention_layernorm = torch.nn.Identity()


def _drop_gemma_quirk(model: torch.nn.Module, which: str) -> None:
    from pagedlm.layers.norm import RMSNorm

    if which == "embedding":
        model.model.embedding_multiplier = 1.0
        return
    for module in model.modules():  # the loader stored 1 + w: back to plain w
        if isinstance(module, RMSNorm):
            module.weight.data -= 1.0


@pytest.mark.parametrize("name,undo,which", [
    ("granite", _drop_granite_multiplier, "embedding"),
    ("granite", _drop_granite_multiplier, "residual"),
    ("granite", _drop_granite_multiplier, "attention"),
    ("granite", _drop_granite_multiplier, "logits"),
    ("smollm3", _rope_on_every_layer, ""),
    ("smollm3", _window_on, ""),
    ("olmo2", _qk_norm_per_head, ""),
    ("olmo2", _post_norms_off, ""),
    ("gemma", _drop_gemma_quirk, "embedding"),
    ("gemma", _drop_gemma_quirk, "unit_offset"),
])
def test_quirks_bite(checkpoint, name, undo, which):
    """The parity above could not pass by luck: with one quirk undone in the engine, its
    prompt logprobs move away from transformers'."""
    from pagedlm import LLM, SamplingParams
    from transformers import AutoModelForCausalLM

    path = checkpoint(name)
    prompt = PROMPTS[4]  # 70 tokens
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).logits[0].log_softmax(-1)
    llm = LLM(path, device="cpu", max_model_len=128, enable_prefix_caching=False)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0)

    def max_error() -> float:
        out = llm.generate({"prompt_token_ids": prompt}, params, use_tqdm=False)[0]
        return max(abs(out.prompt_logprobs[pos][prompt[pos]].logprob - ref[pos - 1, prompt[pos]].item())
                   for pos in range(1, len(prompt)))

    assert max_error() < 1e-4
    undo(llm.llm_engine.engine_core.runner.model, which)
    assert max_error() > 1e-2


@pytest.mark.parametrize("name", ["granite", "olmo2"])
def test_pipeline_stages(checkpoint, name):
    """Two pipeline stages (gloo worker processes): the embedding multiplier on the first,
    logits_scaling on the last, OLMo 2's (output, stream) pair handed between them; the
    outputs still equal transformers'."""
    path = checkpoint(name)
    prompts = PROMPTS[1:4]
    llm, outputs = run(path, prompts, max_model_len=64, pipeline_parallel_size=2, block_size=4,
                       max_num_batched_tokens=16)
    try:
        assert llm.llm_engine.config.parallel_config.distributed_executor_backend == "mp"
        check_close(hf_reference(path, prompts, 10), outputs, prompts)
    finally:
        llm.llm_engine.engine_core.shutdown()


@pytest.mark.parametrize("name,override,message", [
    ("gemma", dict(use_bidirectional_attention=True), "bidirectional"),
    ("gemma", dict(hidden_act="relu"), "relu"),
    ("granite", dict(rope_parameters={"rope_type": "mrope", "rope_theta": 10000.0}), "mrope"),
])
def test_unsupported_settings_are_refused(checkpoint, name, override, message):
    from transformers import AutoConfig

    from pagedlm.models.registry import resolve_model_class

    config = AutoConfig.from_pretrained(checkpoint(name))
    for key, value in override.items():
        setattr(config, key, value)
    with pytest.raises(ValueError, match=message):
        resolve_model_class(config.architectures)(config, max_position=64)


def test_olmo2_refuses_tensor_parallel(checkpoint):
    """Its q / k norms reduce over all heads, which tensor-parallel ranks split: refused in
    one line, not computed per rank."""
    from transformers import AutoConfig

    from pagedlm.config import ConfigError
    from pagedlm.models.olmo2 import Olmo2ForCausalLM
    from pagedlm.worker.distributed import destroy_distributed_environment, set_parallel_state_for_tests

    config = AutoConfig.from_pretrained(checkpoint("olmo2"))
    set_parallel_state_for_tests(0, 2, 1)
    try:
        with pytest.raises(ConfigError, match="tensor_parallel_size"):
            Olmo2ForCausalLM(config)
    finally:
        destroy_distributed_environment()
