"""N-gram speculation under async scheduling after a request with presence/frequency
penalties: the persistent batch's penalty counts then exist, and the async path records the
accepted drafts into them when it takes a step's output (it crashed there once, outside
inference mode, leaking the request's blocks)."""

from __future__ import annotations

from pagedlm import LLM, SamplingParams

SPEC = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3}
PROMPT = {"prompt_token_ids": [5, 6, 7, 8, 9, 10] * 5}  # repetitive: the n-gram proposer drafts


def test_async_ngram_after_penalty_request(seeded_checkpoint) -> None:
    path = seeded_checkpoint("llama", 1)
    reference = LLM(path, device="cpu", speculative_config=SPEC, async_scheduling=False)
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    penalised = SamplingParams(temperature=0, max_tokens=4, presence_penalty=1.0)
    reference.generate([PROMPT], penalised, use_tqdm=False)
    expected = reference.generate([PROMPT], greedy, use_tqdm=False)[0].outputs[0].token_ids

    llm = LLM(path, device="cpu", speculative_config=SPEC, async_scheduling=True)
    llm.generate([PROMPT], penalised, use_tqdm=False)
    got = llm.generate([PROMPT], greedy, use_tqdm=False)[0].outputs[0].token_ids
    assert list(got) == list(expected)
    stats = llm.llm_engine.get_stats()
    assert stats.spec_decoding["num_drafts"] > 0
    assert stats.num_free_blocks == stats.num_total_blocks
