"""logprob_token_ids (vLLM's SamplingParams field): the logprobs of the listed token ids at each
generated position, beside the sampled token's, instead of the top-k.

Values are checked against an independent computation (the same tiny float32 checkpoint run
through transformers), ranks against a count over the whole vocabulary; a mixed batch gives
each request what it asked; the processed_* modes and the rejection sampler (speculative
decoding) report the listed ids like the plain path; bad lists are refused."""

from __future__ import annotations

import math

import pytest
import torch

from pagedlm.sample import Sampler, build_sampling_metadata
from pagedlm.sample.logprobs import count_at_least
from pagedlm.sampling_params import MAX_LOGPROB_TOKEN_IDS, SamplingParams
from pagedlm.spec_decode.rejection_sampler import rejection_sample

PROMPT = [1, 5, 9, 14, 3, 22, 7]
MAX_TOKENS = 6
IDS = [4, 17, 30]


@pytest.fixture(scope="module")
def llm(demo_checkpoint):
    from pagedlm import LLM

    return LLM(str(demo_checkpoint), device="cpu", dtype="float32", max_model_len=128, enable_prefix_caching=False)


def _greedy(**kwargs) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, **kwargs)


def _reference(demo_hf_model, tokens: list[int]) -> torch.Tensor:
    """[MAX_TOKENS, V] float64: the raw logprobs after the prompt and each generated token."""
    with torch.no_grad():
        logits = demo_hf_model(torch.tensor([PROMPT + tokens[:-1]])).logits[0].double()
    return logits[len(PROMPT) - 1:].log_softmax(-1)


def _check_listed(completion, demo_hf_model, ids: list[int]) -> None:
    tokens = list(completion.token_ids)
    assert len(tokens) == MAX_TOKENS and len(completion.logprobs) == MAX_TOKENS
    want = _reference(demo_hf_model, tokens)
    for i, step in enumerate(completion.logprobs):
        assert set(step) == {tokens[i], *ids}, i  # the sampled token and exactly the listed ids
        for token_id, lp in step.items():
            assert lp.logprob == pytest.approx(want[i, token_id].item(), abs=1e-4), (i, token_id)
            assert lp.rank == int((want[i] >= want[i, token_id]).sum()), (i, token_id)
        assert step[tokens[i]].rank == 1  # greedy


def test_listed_ids_values_and_ranks(llm, demo_hf_model):
    out = llm.generate([{"prompt_token_ids": PROMPT}], _greedy(logprob_token_ids=IDS), use_tqdm=False)
    completion = out[0].outputs[0]
    _check_listed(completion, demo_hf_model, IDS)
    # the cumulative logprob sums the sampled tokens' values, as with top-k logprobs
    assert completion.cumulative_logprob == pytest.approx(
        sum(step[t].logprob for step, t in zip(completion.logprobs, completion.token_ids)), abs=1e-4)


def test_mixed_batch_gives_each_request_what_it_asked(llm, demo_hf_model):
    """A request with ids, one with top-2, one without logprobs, one with a longer list and an
    explicit logprobs equal to its length (vLLM's rule), and one listing its own sampled token."""
    solo = llm.generate([{"prompt_token_ids": PROMPT}], _greedy(), use_tqdm=False)[0].outputs[0]
    first = solo.token_ids[0]
    longer = [2, 3, 5, 8, 13, 21, 34]
    params = [_greedy(logprob_token_ids=IDS), _greedy(logprobs=2), _greedy(),
              _greedy(logprobs=len(longer), logprob_token_ids=longer), _greedy(logprob_token_ids=[first, 6])]
    outs = [o.outputs[0] for o in llm.generate([{"prompt_token_ids": PROMPT}] * len(params), params, use_tqdm=False)]
    assert all(o.token_ids == solo.token_ids for o in outs)
    _check_listed(outs[0], demo_hf_model, IDS)
    _check_listed(outs[3], demo_hf_model, longer)
    _check_listed(outs[4], demo_hf_model, [first, 6])
    assert len(outs[4].logprobs[0]) == 2  # the sampled token listed: once, with its own rank
    assert outs[2].logprobs is None
    want = _reference(demo_hf_model, list(solo.token_ids))
    for i, step in enumerate(outs[1].logprobs):  # top-2 (greedy: the sampled token is the first)
        assert sorted(lp.rank for lp in step.values()) == [1, 2]
        assert sorted((lp.logprob for lp in step.values()), reverse=True) == pytest.approx(
            want[i].topk(2).values.tolist(), abs=1e-4)


@pytest.mark.parametrize("bad, message", [
    (dict(logprob_token_ids=[]), "non-empty"),
    (dict(logprob_token_ids=[1, -2]), "non-negative"),
    (dict(logprob_token_ids=[1, True]), "non-negative integers"),
    (dict(logprob_token_ids=list(range(MAX_LOGPROB_TOKEN_IDS + 1))), f"more than the {MAX_LOGPROB_TOKEN_IDS}"),
    (dict(logprob_token_ids=[1, 2, 3], logprobs=2), "equal to len"),
    (dict(logprob_token_ids=[1, 2], logprobs=-1), "equal to len"),
])
def test_bad_lists_are_refused_by_sampling_params(bad, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**bad)


def test_out_of_vocab_ids_are_refused_by_the_engine(llm):
    with pytest.raises(ValueError, match="logprob_token_ids contains token ids outside the vocabulary"):
        llm.generate([{"prompt_token_ids": PROMPT}], _greedy(logprob_token_ids=[1, 10**6]), use_tqdm=False)


def test_long_lists_pass_max_logprobs_as_vllm(llm, demo_hf_model):
    """vLLM bounds the list by its own MAX_LOGPROB_TOKEN_IDS, not --max-logprobs (20 here)."""
    ids = list(range(40))
    out = llm.generate([{"prompt_token_ids": PROMPT}], _greedy(logprob_token_ids=ids), use_tqdm=False)
    _check_listed(out[0].outputs[0], demo_hf_model, ids)
    with pytest.raises(ValueError, match="max-logprobs"):
        llm.generate([{"prompt_token_ids": PROMPT}], _greedy(logprobs=40), use_tqdm=False)


# ---- the samplers directly ------------------------------------------------------------------

V = 16
MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")


def _md(params, outputs=None):
    n = len(params)
    return build_sampling_metadata(params, [[0, 1]] * n, outputs or [[] for _ in range(n)], [None] * n, V,
                                   torch.device("cpu"))


def _listed_row(out, row: int, ids: list[int]) -> tuple[list[int], list[float], list[int]]:
    k = len(ids)
    return (out.token_ids[row, 1: k + 1].tolist(), out.logprobs[row, 1: k + 1].tolist(),
            out.top_ranks[row, :k].tolist())


@pytest.mark.parametrize("mode", MODES)
def test_sampler_listed_ids_in_every_mode(mode):
    """Listed ids take the mode's values (processed_*: after penalties, temperature, top-k, so a
    filtered-out id is at -inf with rank V) and their true ranks; a top-k row beside them keeps
    its top-k ranked by position."""
    torch.manual_seed(0)
    logits = torch.randn(3, V) * 3
    ids = [3, 9, 0, 15]
    params = [SamplingParams(temperature=0.0, logprob_token_ids=ids, repetition_penalty=1.5),
              SamplingParams(temperature=0.7, top_k=3, logprob_token_ids=ids[:2]),
              SamplingParams(temperature=0.0, logprobs=2)]
    torch.manual_seed(3)
    out = Sampler(logprobs_mode=mode)(logits, _md(params)).logprobs
    torch.manual_seed(3)
    plain = Sampler(logprobs_mode=mode)(logits, _md([SamplingParams(**{**vars(p), "logprob_token_ids": None,
                                                                        "logprobs": V}) for p in params])).logprobs
    for row, row_ids in ((0, ids), (1, ids[:2])):
        full = dict(zip(plain.token_ids[row, 1:].tolist(), plain.logprobs[row, 1:].tolist()))  # every token
        got_ids, got_values, got_ranks = _listed_row(out, row, row_ids)
        assert got_ids == row_ids
        assert got_values == pytest.approx([full[t] for t in row_ids])
        values = torch.tensor([full[t] for t in range(V)])
        assert got_ranks == [int((values >= full[t]).sum()) for t in row_ids]
    assert out.token_ids[2, 1:3].tolist() == plain.token_ids[2, 1:3].tolist()
    assert out.top_ranks[2, :2].tolist() == [1, 2]


def test_sampler_without_listed_ids_keeps_its_layout():
    logits = torch.randn(2, V)
    md = _md([SamplingParams(temperature=0.0, logprobs=3)] * 2)
    assert md.logprob_token_ids is None
    out = Sampler()(logits, md).logprobs
    assert out.top_ranks is None and out.token_ids.shape == (2, 4)
    assert _md([SamplingParams(temperature=0.0)] * 2).logprob_token_ids is None


def test_count_at_least_matches_a_full_comparison():
    torch.manual_seed(2)
    values = torch.randn(4, 50)
    values[0, :10] = values[0, 10]  # ties count as >= (vLLM's convention)
    values[1, :5] = -math.inf
    targets = values.gather(1, torch.tensor([[10, 3, 49], [0, 7, 8], [1, 2, 3], [4, 5, 6]]))
    want = (values.unsqueeze(1) >= targets.unsqueeze(2)).sum(-1)
    assert torch.equal(count_at_least(values, targets), want)


@pytest.mark.parametrize("mode", MODES)
def test_rejection_sampler_reports_listed_ids(mode):
    """The speculative path's gather: draft and bonus rows of a request with ids report them."""
    torch.manual_seed(1)
    logits = torch.randn(3, V) * 2
    ids = [2, 11, 5]
    sp = SamplingParams(temperature=0.0, logprob_token_ids=ids, repetition_penalty=1.3)
    drafts = torch.tensor([4, 7, -1])
    md = _md([sp] * 3, [[3], [3, 4], [3, 4, 7]])
    out = rejection_sample(logits, drafts, drafts >= 0, md, logprobs_mode=mode).logprobs
    plain = Sampler(logprobs_mode=mode)(logits, _md([sp] * 3, [[3], [3, 4], [3, 4, 7]])).logprobs
    assert torch.equal(out.token_ids[:, 1:], plain.token_ids[:, 1:])
    assert torch.allclose(out.logprobs[:, 1:], plain.logprobs[:, 1:], equal_nan=True)
    assert torch.equal(out.top_ranks, plain.top_ranks)


def test_speculative_decoding_and_async_scheduling_report_listed_ids(demo_checkpoint, llm):
    """ngram speculation and async scheduling give the same tokens and listed-id logprobs as the
    plain engine."""
    from pagedlm import LLM

    # 24 tokens: this model's greedy output repeats itself there, so n-gram drafts are made
    params = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprob_token_ids=IDS),
              SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=2)]
    prompts = [{"prompt_token_ids": PROMPT}] * 2
    want = llm.generate(prompts, params, use_tqdm=False)
    for settings in (dict(speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                              "prompt_lookup_min": 1, "prompt_lookup_max": 3}),
                     dict(async_scheduling=True)):
        other = LLM(str(demo_checkpoint), device="cpu", dtype="float32", max_model_len=128, enable_prefix_caching=False,
                    **settings)
        got = other.generate(prompts, params, use_tqdm=False)
        if "speculative_config" in settings:  # drafts were verified (accepted or not)
            assert other.llm_engine.engine_core.scheduler.spec_stats.snapshot()["num_drafts"] > 0
        for g, w in zip(got, want):
            g, w = g.outputs[0], w.outputs[0]
            assert g.token_ids == w.token_ids
            assert [set(s) for s in g.logprobs] == [set(s) for s in w.logprobs]
            for gs, ws in zip(g.logprobs, w.logprobs):
                for tid in ws:
                    assert gs[tid].logprob == pytest.approx(ws[tid].logprob, abs=1e-4)
                    assert gs[tid].rank == ws[tid].rank
