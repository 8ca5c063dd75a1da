"""Gemma 2/3, Phi-3 (plain and LongRoPE), Mixtral, Qwen2-MoE, Qwen3-MoE, GPT-2 and yarn RoPE:
greedy token ids and logprobs equal transformers (float32, CPU), plainly and in one
stressed engine that chunks prefills, preempts and then serves every prompt again from the
prefix cache. The tiny configs (tests/conftest.py) exercise each family's quirks: sliding
windows shorter than the prompts, soft-caps that change the result, dense and shared-expert
MoE layers, un-normalised top-k routing, tied heads."""

from __future__ import annotations

import pytest
import torch

from models.test_parity import PROMPTS, check_close, greedy, hf_reference, run

ARCHS = ["gemma2", "gemma3", "phi3", "mixtral", "qwen2_moe", "qwen3_moe", "gpt2", "llama_yarn", "qwen2_yarn"]


def run_stressed(path: str, prompts: list[list[int]], ref) -> None:
    """Block size 4, 16-token steps (the 41- and 70-token prompts prefill in chunks), 24
    blocks = 96 tokens for ~180 tokens of requests (preemption), then the longest prompt
    again on its own (prefix-cache hits)."""
    llm, outputs = run(path, prompts, max_model_len=96, block_size=4, max_num_batched_tokens=16,
                       num_gpu_blocks_override=24, enable_prefix_caching=True)
    check_close(ref, outputs, prompts)
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions_total > 0
    again = llm.generate([{"prompt_token_ids": prompts[-1]}], greedy(), use_tqdm=False)
    check_close(ref[-1:], again, prompts[-1:])
    assert again[0].num_cached_tokens > 0
    stats = llm.llm_engine.get_stats()
    assert stats.num_free_blocks == stats.num_total_blocks


@pytest.mark.parametrize("name", ARCHS)
def test_parity(checkpoint_factory, name):
    path = checkpoint_factory(name)
    ref = hf_reference(path, PROMPTS, 10)
    _, outputs = run(path, PROMPTS, max_model_len=128, enable_prefix_caching=False)
    check_close(ref, outputs, PROMPTS)
    run_stressed(path, PROMPTS, ref)


def test_phi3_longrope_short_and_long_factors(checkpoint_factory):
    """Original context 48. max_model_len 48: short factors, as transformers uses for
    sequences that stay within it. max_model_len 128: long factors, as transformers uses
    once the prompt alone exceeds the original context."""
    path = checkpoint_factory("phi3_longrope")
    short_prompts = [p for p in PROMPTS if len(p) + 10 <= 48]
    _, outputs = run(path, short_prompts, max_model_len=48)
    check_close(hf_reference(path, short_prompts, 10), outputs, short_prompts)
    long_prompts = [[(i * 29) % 480 + 11 for i in range(n)] for n in (49, 64, 90)]
    _, outputs = run(path, long_prompts, max_model_len=128, block_size=4, max_num_batched_tokens=32)
    check_close(hf_reference(path, long_prompts, 10), outputs, long_prompts)


@pytest.mark.parametrize("disable", ["softcap", "sliding_window"])
def test_gemma2_quirks_bite(checkpoint_factory, disable):
    """The parity above could not pass by luck: with the attention soft-cap or the sliding
    windows switched off in the engine, its prompt logprobs move away from transformers'."""
    from pagedlm import LLM, SamplingParams
    from transformers import AutoModelForCausalLM

    path = checkpoint_factory("gemma2")
    prompt = PROMPTS[4]  # 70 tokens, window 8
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
    for attn in llm.llm_engine.engine_core.runner.model.attention_layers():
        setattr(attn, disable, None)
    assert max_error() > 1e-2
