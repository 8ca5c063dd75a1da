"""A request's output does not depend on how it was scheduled.

One random workload (greedy and seeded sampling, penalties, logit bias, min_tokens, stop token
ids, logprobs, prompt logprobs, n > 1, shared prefixes, repeated prompts, cache salts) runs
once in one batch with a KV cache that holds it all, and then under stress: requests
arriving over several steps, others aborted mid-flight, a KV cache small enough to preempt,
small prefill chunks, async scheduling or the priority policy, DELTA outputs. Every request
that was not aborted must produce the same tokens, finish and stop reasons, logprobs and
prompt logprobs, and every KV block must be free at the end.
"""

from __future__ import annotations

import random

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.sampling_params import RequestOutputKind

MAX_MODEL_LEN = 64


def _workload(seed: int) -> list[tuple[dict, SamplingParams]]:
    rng = random.Random(seed)
    prefixes = [[rng.randrange(5, 500) for _ in range(rng.randint(6, 24))] for _ in range(2)]
    work: list[tuple[dict, SamplingParams]] = []
    for _ in range(12):
        if rng.random() < 0.5:
            ids = rng.choice(prefixes) + [rng.randrange(5, 500) for _ in range(rng.randint(0, 8))]
        else:
            ids = [rng.randrange(5, 500) for _ in range(rng.randint(1, 36))]
        if work and rng.random() < 0.15:
            ids = list(work[rng.randrange(len(work))][0]["prompt_token_ids"])
        kw: dict = dict(max_tokens=rng.randint(4, 16), ignore_eos=rng.random() < 0.75)
        if rng.random() < 0.5:
            kw["temperature"] = 0.0
        else:
            kw.update(temperature=rng.choice([0.7, 1.5]), seed=rng.randrange(1000), n=rng.choice([1, 1, 2]),
                      top_k=rng.choice([0, 5]), top_p=rng.choice([1.0, 0.9]))
        if rng.random() < 0.3:
            kw.update(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.3)
        if rng.random() < 0.3:
            kw["logprobs"] = rng.choice([0, 2])
        if rng.random() < 0.2:
            kw["prompt_logprobs"] = 1  #
        if rng.random() < 0.3:
            kw["stop_token_ids"] = [rng.randrange(5, 500) for _ in range(40)]
            kw["min_tokens"] = rng.randint(0, kw["max_tokens"])
        if rng.random() < 0.15:
            kw["logit_bias"] = {rng.randrange(5, 500): 4.0}
        prompt = {"prompt_token_ids": ids}
        if rng.random() < 0.2:
            prompt["cache_salt"] = rng.choice(["x", "y"])
        work.append((prompt, SamplingParams(**kw)))
    return work


def _lp(rows):
    return None if rows is None else [None if d is None else {t: v.logprob for t, v in d.items()}
                                      for d in rows]


def _same(a, b) -> bool:
    """Equal, with logprobs within 1e-3 (the batch's shape changes the float sums)."""
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) < 1e-3 or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _summary(outputs) -> tuple:
    """The merged DELTA (or FINAL_ONLY) outputs of one request."""
    choices: dict[int, list] = {}
    prompt_lp = None
    for out in outputs:
        if out.prompt_logprobs is not None:
            assert prompt_lp is None, "prompt logprobs delivered twice"
            prompt_lp = _lp(out.prompt_logprobs)
        for c in out.outputs:
            tokens, lps, _ = choices.setdefault(c.index, [[], None, None])
            tokens += c.token_ids
            if c.logprobs is not None:
                choices[c.index][1] = (lps or []) + _lp(c.logprobs)
            if c.finish_reason is not None:
                choices[c.index][2] = (c.finish_reason, c.stop_reason)
    return prompt_lp, sorted((i, tuple(t), lps, fin) for i, (t, lps, fin) in choices.items())


@pytest.fixture(scope="module")
def reference(llama_checkpoint):
    path = llama_checkpoint
    work = _workload(0)
    llm = LLM(path, device="cpu", max_model_len=MAX_MODEL_LEN)
    outs = llm.generate([p for p, _ in work], [sp for _, sp in work], use_tqdm=False)
    return path, work, [_summary([o]) for o in outs]


STRESS = {
    "async_preempt_chunked": dict(async_scheduling=True, max_num_batched_tokens=11),
    "priority_preempt": dict(scheduling_policy="priority", max_num_batched_tokens=16, long_prefill_token_threshold=6),
}


@pytest.mark.parametrize("setting", list(STRESS))
def test_outputs_do_not_depend_on_scheduling(reference, setting: str) -> None:
    path, work, expected = reference
    # 16 blocks of 4 tokens (one max_model_len): far fewer than the workload holds at once, so requests are preempted.
    llm = LLM(path, device="cpu", max_model_len=MAX_MODEL_LEN, block_size=4, num_gpu_blocks_override=16,
              **STRESS[setting])
    engine = llm.llm_engine
    rng = random.Random(1)
    prioritised = STRESS[setting].get("scheduling_policy") == "priority"
    pending = list(range(len(work)))
    aborted: set[int] = set()
    got: dict[int, list] = {}
    for _ in range(2000):
        for _ in range(rng.randint(1, 3)):
            if pending:
                i = pending.pop(0)
                params = work[i][1].clone()
                params.output_kind = RequestOutputKind.DELTA
                engine.add_request(str(i), work[i][0], params, priority=rng.randint(0, 2) if prioritised else 0)
        if rng.random() < 0.05 and engine.output_processor.parents:
            victim = rng.choice(sorted(engine.output_processor.parents))
            engine.abort_request(victim)
            aborted.add(int(victim))
        for out in engine.step():
            got.setdefault(int(out.request_id), []).append(out)
        if not pending and not engine.has_unfinished_requests():
            break
    else:
        pytest.fail("the engine did not finish the workload")
    stats = engine.get_stats()
    assert stats.num_preemptions_total > 0 and aborted
    assert stats.num_free_blocks == stats.num_total_blocks
    for i in range(len(work)):
        if i not in aborted:
            summary = _summary(got[i])
            assert _same(summary, expected[i]), f"request {i} {work[i]}: {summary} != {expected[i]}"
