"""Programmatic dependent launch (pagedlm.kernels.pdl) changes when kernels start, never what
they compute: a chain of the step's kernels replayed from a CUDA graph, and the engine's greedy
tokens and logprobs, are bit-for-bit the same with PDL on and off. Needs a Hopper GPU."""

from __future__ import annotations

import pytest
import torch

from pagedlm import LLM, SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                                reason="PDL needs a GPU of compute capability 9.0 or later")


@pytest.fixture
def pdl_switch():
    from pagedlm.kernels import pdl

    yield pdl.set_enabled
    pdl.set_enabled(None)


def _chain(x, res, w_norm, weights, configs):
    """Layers of [add + RMSNorm, GEMV (split-K, in-kernel reduction), SiLU·mul, GEMV]: each kernel
    reads what the one before it wrote."""
    from pagedlm.kernels import triton_activation, triton_norm
    from pagedlm.kernels.triton_gemv_fused import fused_gemv

    for w_up, w_down in weights:
        h, res = triton_norm.fused_add_rms_norm(x, res, w_norm, 1e-5)
        up = fused_gemv(h, w_up, None, None, h.dtype, None, configs[0])
        x = fused_gemv(triton_activation.silu_and_mul(up), w_down, None, None, h.dtype, None, configs[1])
    return x + res


def test_pdl_kernel_chain_is_bitwise_equal(pdl_switch):
    from pagedlm.kernels.triton_gemv_fused import FusedGemvConfig

    g = torch.Generator(device="cuda").manual_seed(0)
    hidden, inter = 1024, 2048
    weights = [(torch.randn(2 * inter, hidden, generator=g, device="cuda", dtype=torch.bfloat16) * hidden**-0.5,
                torch.randn(hidden, inter, generator=g, device="cuda", dtype=torch.bfloat16) * inter**-0.5)
               for _ in range(6)]
    w_norm = torch.rand(hidden, generator=g, device="cuda", dtype=torch.bfloat16) + 0.5
    x = torch.randn(2, hidden, generator=g, device="cuda", dtype=torch.bfloat16)
    res = torch.randn_like(x)
    configs = (FusedGemvConfig(8, 256, 4), FusedGemvConfig(16, 256, 2))
    outs = {}
    for on in (False, True):
        pdl_switch(on)
        _chain(x, res, w_norm, weights, configs)  # compile, make the ticket counters
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = _chain(x, res, w_norm, weights, configs)
        replays = []
        for _ in range(20):
            graph.replay()
            replays.append(out.clone())
        torch.cuda.synchronize()
        assert all(torch.equal(r, replays[0]) for r in replays), f"PDL {on}: replays differ"
        outs[on] = replays[0]
    assert torch.equal(outs[False], outs[True])


def test_pdl_engine_same_tokens_and_logprobs(llama_checkpoint, pdl_switch):
    prompts = [{"prompt_token_ids": [7]}, {"prompt_token_ids": list(range(30, 66))},
               {"prompt_token_ids": [(i * 37) % 500 + 5 for i in range(41)]}]
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=2)
    results = {}
    for on in (False, True):
        pdl_switch(on)
        llm = LLM(llama_checkpoint, device="cuda", dtype="bfloat16", max_model_len=128, max_num_seqs=4,
                  num_gpu_blocks_override=256)
        outs = llm.generate(prompts, params, use_tqdm=False)
        results[on] = [(o.outputs[0].token_ids, [{t: lp.logprob for t, lp in step.items()}
                                                 for step in o.outputs[0].logprobs]) for o in outs]
        del llm
    assert results[False] == results[True]
