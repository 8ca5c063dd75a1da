"""Greedy token ids and top-k logprobs equal to Hugging Face transformers, float32 on CPU.

Where two tokens differ, the check is vLLM's: each side's token must be in the other's
top-k logprobs, and comparison stops at the first divergence.
"""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams

NUM_LOGPROBS = 5
MAX_TOKENS = 10
# 1 token up to several blocks (block size 16 by default, 4 in the small-block runs)
PROMPTS = [
    [7],
    [11, 23, 5, 60, 2],
    list(range(30, 46)),  # exactly one 16-token block
    [(i * 37) % 500 + 5 for i in range(41)],
    [(i * 13) % 490 + 7 for i in range(70)],
]


def hf_reference(path: str, prompts: list[list[int]], max_tokens: int) -> list[tuple[list[int], list[torch.Tensor]]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    results = []
    for prompt in prompts:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([prompt]), max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                output_logits=True, return_dict_in_generate=True, pad_token_id=0,
            )
        ids = out.sequences[0, len(prompt):].tolist()
        logprobs = [step[0].float().log_softmax(-1) for step in out.logits]
        results.append((ids, logprobs))
    return results


def check_close(ref: list[tuple[list[int], list[torch.Tensor]]], outputs, prompts) -> None:
    for (ref_ids, ref_lps), out, prompt in zip(ref, outputs, prompts):
        completion = out.outputs[0]
        assert out.prompt_token_ids == prompt
        assert len(completion.token_ids) == MAX_TOKENS
        for pos, (ref_id, ours_id) in enumerate(zip(ref_ids, completion.token_ids)):
            ours = completion.logprobs[pos]
            ref_top = torch.topk(ref_lps[pos], NUM_LOGPROBS)
            if ref_id != ours_id:
                assert ours_id in ref_top.indices.tolist() and ref_id in ours, (
                    f"prompt {prompt[:6]}... diverged at {pos}: hf {ref_id}, pagedlm {ours_id}")
                break
            # Same token: its logprob and the top-k set agree with transformers.
            assert abs(ours[ours_id].logprob - ref_lps[pos][ref_id].item()) < 1e-4
            assert ours[ours_id].rank == 1
            top_ours = sorted((t for t in ours if ours[t].rank <= NUM_LOGPROBS), key=lambda t: ours[t].rank)
            for tid, lp in zip(ref_top.indices.tolist(), ref_top.values.tolist()):
                assert tid in ours and abs(ours[tid].logprob - lp) < 1e-4
            assert len(top_ours) >= NUM_LOGPROBS


def greedy(max_tokens: int = MAX_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=NUM_LOGPROBS, ignore_eos=True)


def run(path: str, prompts, **kwargs):
    llm = LLM(path, device="cpu", **kwargs)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(), use_tqdm=False)
    return llm, outputs


@pytest.mark.parametrize("name", ["llama", "llama_linear_tied", "mistral", "qwen2", "qwen3_sharded"])
def test_parity_per_architecture(checkpoint_factory, name):
    path = checkpoint_factory(name)
    ref = hf_reference(path, PROMPTS, MAX_TOKENS)
    for kwargs in (dict(enable_prefix_caching=False), dict(enable_prefix_caching=True)):
        _, outputs = run(path, PROMPTS, max_model_len=128, **kwargs)
        check_close(ref, outputs, PROMPTS)


@pytest.fixture(scope="module")
def llama_ref(checkpoint_factory):
    path = checkpoint_factory("llama")
    shared = [(i * 7) % 400 + 9 for i in range(35)]
    prompts = PROMPTS + [shared + [1, 2, 3], shared + [4, 5], shared[:20]]
    return path, prompts, hf_reference(path, prompts, MAX_TOKENS)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_parity_with_prefix_cache_hits(llama_ref, async_scheduling):
    path, prompts, ref = llama_ref
    llm, first = run(path, prompts, max_model_len=128, block_size=4, async_scheduling=async_scheduling)
    check_close(ref, first, prompts)
    again = llm.generate([{"prompt_token_ids": p} for p in prompts], greedy(), use_tqdm=False)
    check_close(ref, again, prompts)
    # Second pass: every prompt's full blocks (except one holding its last token) come from cache.
    for out, prompt in zip(again, prompts):
        assert out.num_cached_tokens == (len(prompt) - 1) // 4 * 4
    stats = llm.llm_engine.get_stats()
    assert stats.prefix_cache_hits_total > 0
    assert stats.num_free_blocks == stats.num_total_blocks


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_parity_with_chunked_prefill(llama_ref, async_scheduling):
    path, prompts, ref = llama_ref
    llm, outputs = run(path, prompts, max_model_len=128, block_size=4, max_num_batched_tokens=7,
                       async_scheduling=async_scheduling)
    check_close(ref, outputs, prompts)


def test_parity_without_chunked_prefill_under_preemption(llama_ref):
    path, prompts, ref = llama_ref
    # Whole prompts only (the step budget defaults to at least max_model_len), and a KV pool
    # small enough that requests are preempted and recompute their prompts whole.
    llm, outputs = run(path, prompts, max_model_len=96, block_size=4, num_gpu_blocks_override=24,
                       enable_chunked_prefill=False)
    config = llm.llm_engine.config.scheduler_config
    assert not config.enable_chunked_prefill and config.max_num_batched_tokens >= 96
    check_close(ref, outputs, prompts)
    assert llm.llm_engine.get_stats().num_preemptions_total > 0


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_parity_under_preemption(llama_ref, async_scheduling):
    path, prompts, ref = llama_ref
    # 96 tokens of KV for 8 requests of up to 80 tokens: they must take turns.
    llm, outputs = run(path, prompts, max_model_len=96, block_size=4, num_gpu_blocks_override=24,
                       max_num_batched_tokens=32, async_scheduling=async_scheduling)
    check_close(ref, outputs, prompts)
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions_total > 0
    assert stats.num_free_blocks == stats.num_total_blocks


def test_prompt_logprobs_come_in_slices_of_max_num_seqs_rows(llama_ref, monkeypatch):
    """A chunk's prompt logprobs are computed max_num_seqs rows at a time (the [rows, vocab]
    logits of a whole 16k-token chunk would outgrow the start-up profile's reservation), with
    the same values as the forward."""
    from transformers import AutoModelForCausalLM

    from pagedlm.layers.embedding import ParallelLMHead

    path, prompts, _ = llama_ref
    prompt = prompts[4]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).logits[0].log_softmax(-1)
    rows = []
    original = ParallelLMHead.compute_logits
    monkeypatch.setattr(ParallelLMHead, "compute_logits", lambda self, h: rows.append(h.shape[0]) or original(self, h))
    llm = LLM(path, max_model_len=128, block_size=4, max_num_batched_tokens=16, max_num_seqs=3, device="cpu")
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=1, prompt_logprobs=2), use_tqdm=False)[0]
    assert len(prompt) > 16 and max(rows) == 3
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for pos in range(1, len(prompt)):
        entry = out.prompt_logprobs[pos]
        assert abs(entry[prompt[pos]].logprob - ref[pos - 1, prompt[pos]].item()) < 1e-4
        assert entry[prompt[pos]].rank == int((ref[pos - 1] >= ref[pos - 1, prompt[pos]]).sum())
        assert set(torch.topk(ref[pos - 1], 2).indices.tolist()) <= set(entry)


def test_prompt_logprobs_match_forward(llama_ref):
    from transformers import AutoModelForCausalLM

    path, prompts, _ = llama_ref
    prompt = prompts[4]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([prompt])).logits[0].log_softmax(-1)
    llm = LLM(path, max_model_len=128, block_size=4, max_num_batched_tokens=16, device="cpu")  # several chunks
    out = llm.generate({"prompt_token_ids": prompt}, SamplingParams(max_tokens=1, prompt_logprobs=3), use_tqdm=False)[0]
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for pos in range(1, len(prompt)):
        entry = out.prompt_logprobs[pos]
        assert abs(entry[prompt[pos]].logprob - ref[pos - 1, prompt[pos]].item()) < 1e-4
        top = torch.topk(ref[pos - 1], 3).indices.tolist()
        assert all(t in entry for t in top)
