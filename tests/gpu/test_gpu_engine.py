"""The engine on a GPU: greedy outputs agree with the CPU reference on a tiny float32
checkpoint, with CUDA graphs on and off. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

PROMPTS = [[7], [11, 23, 5, 60, 2], list(range(30, 46)), [(i * 37) % 500 + 5 for i in range(41)],
           [(i * 13) % 490 + 7 for i in range(70)]]


def greedy_ids(llm: LLM) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@pytest.mark.parametrize("enforce_eager", [True, False])
def test_gpu_greedy_matches_cpu(llama_checkpoint, enforce_eager):
    cpu = greedy_ids(LLM(llama_checkpoint, device="cpu", max_model_len=128))
    gpu_llm = LLM(llama_checkpoint, device="cuda", dtype="float32", max_model_len=128, max_num_seqs=8,
                  enforce_eager=enforce_eager, num_gpu_blocks_override=512)
    assert (gpu_llm.llm_engine.engine_core.runner.graph_runner is None) == enforce_eager
    gpu = greedy_ids(gpu_llm)
    if not enforce_eager:  # decode steps sampled by the LM-head + sampling graphs
        assert gpu_llm.llm_engine.engine_core.runner.graph_sampler.num_replays > 0
    matches = sum(a == b for a, b in zip(cpu, gpu))
    # tf32-free float32 on both sides: token-for-token equal, bar a rare near-tie.
    assert matches >= len(PROMPTS) - 1, (cpu, gpu)


def test_gpu_bf16_default_dtype(llama_checkpoint):
    llm = LLM(llama_checkpoint, device="cuda", max_model_len=128, max_num_seqs=4, num_gpu_blocks_override=512)
    assert llm.llm_engine.model_config.dtype == "bfloat16"
    out = llm.generate("hello", SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4


def test_gpu_prefill_kernel_in_the_engine(tmp_path, monkeypatch):
    """bf16 prompts long enough for the TMA prefill kernel (head_dim 64): it runs, and greedy
    output and prompt logprobs agree with the same engine on the paged kernel alone."""
    from pagedlm.demo import build_tiny_checkpoint
    from pagedlm.kernels import triton_attention, triton_prefill_attention

    path = build_tiny_checkpoint(tmp_path / "llama_d64", "LlamaForCausalLM", seed=3, hidden_size=256,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                 max_position_embeddings=1024)
    prompts = [[(i * (7 + p)) % 480 + 5 for i in range(n)] for p, n in enumerate((130, 400, 257, 2, 390))]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, prompt_logprobs=0)
    calls = []
    real = triton_prefill_attention.prefill_attention
    monkeypatch.setattr(triton_prefill_attention, "prefill_attention", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run() -> list:
        llm = LLM(str(path), device="cuda", dtype="bfloat16", max_model_len=1024, enforce_eager=True,
                  num_gpu_blocks_override=512, enable_prefix_caching=False)
        return llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)

    with_kernel = run()
    assert calls, "the prefill kernel never ran"
    monkeypatch.setattr(triton_attention, "PREFILL_KERNEL_MIN_TOKENS", 1 << 30)
    calls.clear()
    paged_only = run()
    assert not calls
    # The first token comes from the prefill; later ones may part at a bf16 near-tie.
    assert [a.outputs[0].token_ids[0] for a in with_kernel] == [b.outputs[0].token_ids[0] for b in paged_only]
    assert sum(a.outputs[0].token_ids == b.outputs[0].token_ids for a, b in zip(with_kernel, paged_only)) >= 4
    for a, b in zip(with_kernel, paged_only):
        for x, y in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:]):
            (tok, lx), = x.items()
            assert abs(lx.logprob - y[tok].logprob) < 0.1
