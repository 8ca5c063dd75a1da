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



NGRAM_EVERY_STEP = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 3, "prompt_lookup_min": 1}


def test_async_penalised_request_without_drafts_beside_a_drafting_one(seeded_checkpoint) -> None:
    # The penalised request never drafts, so it runs ahead of its in-flight step; the other
    # drafts at every other step, so the steps alternate between verification and plain
    # sampling. Each step's penalties must count the in-flight token (a verify step read the
    # host token list, which lacks it; a plain step after a verify step read device counts
    # that got the verify step's token only when it was resolved). Batched, the penalised
    # request repeated a token it avoids alone (found by a chaos run).
    # Ten tokens biased far above the rest, each 4 above the next, and a repetition penalty
    # that takes a seen one below every unseen one: greedy emits them in bias order, once
    # each, whatever the weights; a token not counted is emitted again at once.
    biased = list(range(49, 39, -1))
    penalised = SamplingParams(temperature=0, max_tokens=len(biased), repetition_penalty=1.3, ignore_eos=True,
                               logit_bias={t: 200.0 + 4 * (t - 40) for t in biased})
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    no_match, repetitive = {"prompt_token_ids": [100, 327]}, {"prompt_token_ids": [5, 6, 7, 8] * 6}
    llm = LLM(seeded_checkpoint("llama", 1), device="cpu", max_model_len=96, speculative_config=NGRAM_EVERY_STEP,
              async_scheduling=True)
    alone = llm.generate([no_match], penalised, use_tqdm=False)[0].outputs[0].token_ids
    batched = llm.generate([no_match, repetitive], [penalised, greedy], use_tqdm=False)[0].outputs[0].token_ids
    assert list(alone) == biased
    assert list(batched) == biased
    assert llm.llm_engine.get_stats().spec_decoding["num_drafts"] > 0
