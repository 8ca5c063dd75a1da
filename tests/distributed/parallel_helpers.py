"""The workload the multi-rank tests share: one engine config and a prompt set that, on a
small KV pool with a small token budget, exercises chunked prefill, prefix caching and
preemption at once; and the TP=1 comparison (vLLM's divergence rule, float32 tolerance)."""

from __future__ import annotations

from pagedlm import LLM, SamplingParams

NUM_LOGPROBS = 5
MAX_TOKENS = 8
SHARED = [(i * 29) % 480 + 9 for i in range(20)]  # a 5-block prefix (block size 4)
PROMPTS = [
    [7],
    [11, 23, 5, 60, 2],
    [(i * 37) % 500 + 5 for i in range(41)],  # longer than the 16-token budget: chunked
    SHARED + [3, 4],
    SHARED + [100, 200, 300],
]
ENGINE_KWARGS = dict(device="cpu", dtype="float32", max_model_len=64, block_size=4, max_num_batched_tokens=16,
                     num_gpu_blocks_override=16, max_num_seqs=4, seed=0)


def sampling_params() -> list[SamplingParams]:
    greedy = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=NUM_LOGPROBS, ignore_eos=True)
    seeded = SamplingParams(max_tokens=MAX_TOKENS, temperature=1.0, seed=1234, logprobs=NUM_LOGPROBS, ignore_eos=True)
    with_prompt_lps = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=NUM_LOGPROBS,
                                     prompt_logprobs=3, ignore_eos=True)
    return [greedy, greedy, with_prompt_lps, seeded, greedy]


def run_workload(llm: LLM) -> list:
    """Two rounds: the second repeats the prompts, so it is served from the prefix cache."""
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    first = llm.generate(prompts, sampling_params(), use_tqdm=False)
    second = llm.generate(prompts, sampling_params(), use_tqdm=False)
    return first + second


def assert_same(ref: list, ours: list, tol: float = 1e-4) -> None:
    for r, o in zip(ref, ours, strict=True):
        ref_c, our_c = r.outputs[0], o.outputs[0]
        assert len(our_c.token_ids) == len(ref_c.token_ids) == MAX_TOKENS
        for pos, (ref_id, our_id) in enumerate(zip(ref_c.token_ids, our_c.token_ids)):
            ref_lp, our_lp = ref_c.logprobs[pos], our_c.logprobs[pos]
            if ref_id != our_id:
                assert our_id in ref_lp and ref_id in our_lp, f"{r.prompt_token_ids[:4]}: diverged at {pos}"
                break
            for tid, lp in ref_lp.items():
                if lp.rank <= NUM_LOGPROBS:
                    assert tid in our_lp and abs(our_lp[tid].logprob - lp.logprob) < tol, (pos, tid)
        if r.prompt_logprobs is not None:  # one entry per prompt token, even across preemptions
            assert len(r.prompt_logprobs) == len(o.prompt_logprobs) == len(r.prompt_token_ids)
            for ref_pos, our_pos in zip(r.prompt_logprobs[1:], o.prompt_logprobs[1:], strict=True):
                for tid, lp in ref_pos.items():
                    assert abs(our_pos[tid].logprob - lp.logprob) < tol


def assert_equals_single_rank(path: str, **parallel) -> None:
    """The shared workload on one rank, then split as ``parallel`` says (gloo workers): the
    same ids and logprobs."""
    single = LLM(path, **ENGINE_KWARGS)
    try:
        reference = run_workload(single)
    finally:
        single.llm_engine.engine_core.shutdown()
    llm = LLM(path, **parallel, **ENGINE_KWARGS)
    try:
        assert_same(reference, run_workload(llm))
    finally:
        llm.llm_engine.engine_core.shutdown()


def assert_tp2_equals_tp1(path: str) -> None:
    assert_equals_single_rank(path, tensor_parallel_size=2)
