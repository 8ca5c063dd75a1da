"""The transformers modeling backend (model_impl="transformers"; "auto" for an architecture
pagedlm has no class for): transformers' own model class runs the forward, with pagedlm's
paged attention plugged in through the attention interface. Greedy token ids and logprobs
equal transformers' generate and pagedlm's native model (float32, CPU, tiny random
checkpoints), for a batch of prompts of 1 to 70 tokens, with chunked prefill and prefix
caching; quantized checkpoints (AWQ, GPTQ, fp8) with the model's linear layers replaced; and what
the backend refuses."""

from __future__ import annotations

import pytest

from models.arch_parity_helpers import checkpoint_getter
from models.test_parity import MAX_TOKENS, PROMPTS, check_close, greedy, hf_reference, run
from pagedlm.config import ConfigError
from pagedlm.engine_args import EngineArgs

SHARED = [(i * 7) % 400 + 9 for i in range(35)]
# Prompts of 1 to 70 tokens plus three sharing a 35-token prefix (prefix-cache hits).
LLAMA_PROMPTS = PROMPTS + [SHARED + [1, 2, 3], SHARED + [4, 5], SHARED[:20]]

# Architectures pagedlm has no native class for (the "auto" fallback). Ministral: Mistral with
# a sliding window per layer type (small, so the 41- and 70-token prompts slide past it);
# tied LM head.
NON_NATIVE = {
    "ministral": ("MinistralForCausalLM", dict(head_dim=16, sliding_window=8,
                                              layer_types=["sliding_attention", "full_attention"],
                                              tie_word_embeddings=True)),
}


def _model(llm):
    return llm.llm_engine.core_client.engine_core.executor.worker.runner.model


@pytest.fixture(scope="module")
def llama(checkpoint_factory):
    path = checkpoint_factory("llama")
    return path, hf_reference(path, LLAMA_PROMPTS, MAX_TOKENS)


@pytest.fixture(scope="module")
def non_native(tmp_path_factory):
    return checkpoint_getter(tmp_path_factory, NON_NATIVE, 700)


def _same_as_native(ours, native) -> None:
    """Token for token the same as pagedlm's native model, logprobs within float32 noise."""
    for a, b in zip(ours, native):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        for lp_a, lp_b in zip(a.outputs[0].logprobs, b.outputs[0].logprobs):
            assert lp_a.keys() == lp_b.keys()
            for tid in lp_a:
                assert abs(lp_a[tid].logprob - lp_b[tid].logprob) < 1e-4


def test_llama_matches_transformers_and_native(llama):
    from pagedlm.models.transformers import TransformersForCausalLM

    path, ref = llama
    llm, ours = run(path, LLAMA_PROMPTS, max_model_len=128, enable_prefix_caching=False, model_impl="transformers")
    assert isinstance(_model(llm), TransformersForCausalLM)
    check_close(ref, ours, LLAMA_PROMPTS)
    llm, native = run(path, LLAMA_PROMPTS, max_model_len=128, enable_prefix_caching=False, model_impl="vllm")
    assert not isinstance(_model(llm), TransformersForCausalLM)
    _same_as_native(ours, native)
    # "auto" keeps the native class of a registered architecture.
    assert EngineArgs(model=path, device="cpu").create_engine_config().model_config.model_impl == "auto"


def test_llama_chunked_prefill_and_prefix_caching(llama):
    """Prompts in 7-token chunks over 4-token blocks, then again from the prefix cache."""
    path, ref = llama
    llm, first = run(path, LLAMA_PROMPTS, max_model_len=128, block_size=4, max_num_batched_tokens=7,
                     enable_prefix_caching=True, model_impl="transformers")
    check_close(ref, first, LLAMA_PROMPTS)
    again = llm.generate([{"prompt_token_ids": p} for p in LLAMA_PROMPTS], greedy(), use_tqdm=False)
    check_close(ref, again, LLAMA_PROMPTS)
    for out, prompt in zip(again, LLAMA_PROMPTS):
        assert out.num_cached_tokens == (len(prompt) - 1) // 4 * 4
    assert llm.llm_engine.get_stats().prefix_cache_hits_total > 0
    _, native = run(path, LLAMA_PROMPTS, max_model_len=128, block_size=4, max_num_batched_tokens=7,
                    enable_prefix_caching=True, model_impl="vllm")
    _same_as_native(first, native)


@pytest.mark.parametrize("name", list(NON_NATIVE))
def test_non_native_architecture_falls_back_to_transformers(non_native, name):
    from pagedlm.models.registry import resolve_model_class
    from pagedlm.models.transformers import TransformersForCausalLM

    path = non_native(name)
    arch = NON_NATIVE[name][0]
    assert resolve_model_class([arch], "auto") is TransformersForCausalLM
    ref = hf_reference(path, PROMPTS, MAX_TOKENS)
    llm, outputs = run(path, PROMPTS, max_model_len=128, enable_prefix_caching=False)  # model_impl="auto"
    assert isinstance(_model(llm), TransformersForCausalLM)
    check_close(ref, outputs, PROMPTS)
    llm, outputs = run(path, PROMPTS, max_model_len=128, block_size=4, max_num_batched_tokens=16,
                       enable_prefix_caching=True)
    check_close(ref, outputs, PROMPTS)
    # Native only: refused, naming the architecture.
    with pytest.raises(ConfigError, match=arch):
        EngineArgs(model=path, device="cpu", model_impl="vllm").create_engine_config()


def test_refusals(llama, non_native):
    from pagedlm.models.registry import resolve_model_class
    from pagedlm.models.transformers import check_layer_types

    path, _ = llama
    for kwargs, needle in ((dict(tensor_parallel_size=2), "one rank"), (dict(pipeline_parallel_size=2), "one rank"),
                           (dict(model_impl="terratorch"), "terratorch"),
                           (dict(enable_lora=True), "LoRA adapters are supported"),
                           (dict(runner="pooling"), "no pooling support"),
                           (dict(speculative_config={"method": "eagle", "model": path, "num_speculative_tokens": 2}),
                            "pagedlm's own implementation of the target")):
        with pytest.raises(ConfigError, match=needle):
            EngineArgs(model=path, device="cpu", **{"model_impl": "transformers", **kwargs}).create_engine_config()
    # "auto" says it tried the transformers backend too; "transformers" names what it needs.
    with pytest.raises(ValueError, match="nor by the transformers backend"):
        resolve_model_class(["NoSuchModelForCausalLM"], "auto")
    with pytest.raises(ValueError, match="_supports_attention_backend"):
        resolve_model_class(["NoSuchModelForCausalLM"], "transformers")
    # Hybrid models keep recurrent state the paged cache does not hold.

    class Hybrid:
        layer_types = ["full_attention", "linear_attention"]

    with pytest.raises(ConfigError, match="linear_attention"):
        check_layer_types(Hybrid(), "HybridForCausalLM")


@pytest.mark.parametrize("name", ["gemma2"])
def test_forced_on_a_native_architecture(checkpoint_factory, name):
    """Gemma 2 through the backend: the module's own softmax scale (query_pre_attn_scalar),
    attention logit soft-capping and sliding window reach the paged attention with each call,
    and the final logit soft-capping applies to the LM head's logits."""
    from pagedlm.models.transformers import TransformersForCausalLM

    path = checkpoint_factory(name)
    ref = hf_reference(path, PROMPTS, MAX_TOKENS)
    llm, outputs = run(path, PROMPTS, max_model_len=128, block_size=4, max_num_batched_tokens=16,
                       model_impl="transformers")
    assert isinstance(_model(llm), TransformersForCausalLM)
    check_close(ref, outputs, PROMPTS)


def test_per_expert_checkpoint_is_refused_clearly(checkpoint_factory):
    """transformers 5 holds a MoE block's experts fused (3-D tensors) while checkpoints store each
    expert apart; the backend loads by name, so it says so instead of a bare missing-name error."""
    from pagedlm import LLM

    with pytest.raises(ConfigError, match="stores each expert's weights apart"):
        LLM(checkpoint_factory("mixtral"), device="cpu", max_model_len=64, model_impl="transformers")


@pytest.mark.parametrize("fmt,options", [("awq", dict(group_size=16)),
                                         ("gptq", dict(bits=4, group_size=16, sym=False, desc_act=True))])
def test_quantized_checkpoint(non_native, tmp_path, fmt, options):
    """A quantized checkpoint of an architecture only the backend runs (Ministral): its
    nn.Linear layers become the format's layers, against transformers on the dequantized
    weights at the parity tolerance."""
    import torch
    from wna16_helpers import quantize_checkpoint

    from pagedlm.layers.linear import ReplicatedLinear

    qdir, refdir = quantize_checkpoint(non_native("ministral"), tmp_path / "q", tmp_path / "ref", fmt, **options)
    ref = hf_reference(str(refdir), PROMPTS, MAX_TOKENS)
    llm, outputs = run(str(qdir), PROMPTS, max_model_len=128)
    check_close(ref, outputs, PROMPTS)
    model = _model(llm)
    assert type(model).__name__ == "TransformersForCausalLM"
    q_proj = model.hf_model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, ReplicatedLinear) and q_proj.qweight.dtype == torch.int32
    assert type(model.hf_model.lm_head) is torch.nn.Linear  # the LM head stays as it is


def test_fp8_per_token_checkpoint(non_native, tmp_path):
    """compressed-tensors fp8 with per-token activations: each layer quantizes its own input."""
    from quant_helpers import FP8
    from quant_parity_helpers import assert_fp8_token_parity

    llm = assert_fp8_token_parity(non_native("ministral"), tmp_path)
    assert _model(llm).hf_model.model.layers[0].mlp.down_proj.weight.dtype == FP8
