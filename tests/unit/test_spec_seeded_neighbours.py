"""A request's output does not depend on what else is in the batch: greedy tokens, and a
seeded request's sampled tokens, equal the same request run alone (found by a chaos run of
random request mixes against each request run alone)."""

from __future__ import annotations

import pytest

from pagedlm import LLM, SamplingParams

NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}
NO_MATCH = {"prompt_token_ids": [100, 327]}  # nothing for the n-gram proposer to look up
REPETITIVE = {"prompt_token_ids": [5, 6, 7, 8] * 6}  # drafts at every step


@pytest.fixture(scope="module")
def ngram_llm(seeded_checkpoint) -> LLM:
    return LLM(seeded_checkpoint("llama", 1), device="cpu", max_model_len=96, speculative_config=NGRAM)


def test_seeded_request_without_drafts_ignores_drafting_neighbours(ngram_llm) -> None:
    # A step where another request has drafts goes through the rejection sampler, one where
    # none has through the plain sampler: a seeded request must draw the same random numbers
    # from its generator either way.
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
    greedy = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = ngram_llm.generate([NO_MATCH], seeded, use_tqdm=False)[0].outputs[0].token_ids
    batched = ngram_llm.generate([NO_MATCH, REPETITIVE], [seeded, greedy], use_tqdm=False)
    greedy_alone = ngram_llm.generate([REPETITIVE], greedy, use_tqdm=False)[0].outputs[0].token_ids
    assert batched[0].outputs[0].token_ids == alone
    assert batched[1].outputs[0].token_ids == greedy_alone
