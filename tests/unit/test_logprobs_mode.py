"""--logprobs-mode (vLLM's): raw_logprobs / raw_logits / processed_logprobs / processed_logits.

Each mode's values are checked against an independent computation: the same tiny float32
checkpoint run through transformers, then penalties, temperature, top-k and top-p applied by
hand (processed_*). Also the Sampler and the rejection sampler directly, prompt logprobs (always
raw, as in vLLM) and beam search (refused under the *_logits modes)."""

from __future__ import annotations

import math

import pytest
import torch

from pagedlm.sample import Sampler, build_sampling_metadata
from pagedlm.sampling_params import SamplingParams
from pagedlm.spec_decode.rejection_sampler import rejection_sample

PROMPT = [1, 5, 9, 14, 3, 22, 7]
MAX_TOKENS = 6
NUM_LOGPROBS = 5
MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")
RANDOM = dict(temperature=0.7, top_k=3, top_p=0.9, repetition_penalty=1.4, presence_penalty=0.6,
              frequency_penalty=0.3, seed=11)
GREEDY = dict(temperature=0.0, repetition_penalty=1.4, presence_penalty=0.6)


@pytest.fixture(scope="module")
def engines(demo_checkpoint):
    """One offline engine per mode (the mode is engine-wide), with a random and a greedy
    request of each kind run once; returns mode -> (llm, random output, greedy output)."""
    from pagedlm import LLM

    out = {}
    for mode in MODES:
        llm = LLM(str(demo_checkpoint), device="cpu", dtype="float32", logprobs_mode=mode, max_model_len=128,
                  enable_prefix_caching=False)
        results = llm.generate(
            [{"prompt_token_ids": PROMPT}, {"prompt_token_ids": PROMPT}],
            [SamplingParams(max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS, prompt_logprobs=3, ignore_eos=True,
                            **RANDOM),
             SamplingParams(max_tokens=MAX_TOKENS, logprobs=NUM_LOGPROBS, ignore_eos=True, **GREEDY)],
            use_tqdm=False)
        out[mode] = (llm, results[0].outputs[0], results[1].outputs[0], results[0].prompt_logprobs)
    return out


def _hf_logits(model, tokens: list[int]) -> torch.Tensor:
    """[len(tokens) - len(PROMPT) + 1, V]: the logits after the prompt and each generated token."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].double()
    return logits[len(PROMPT) - 1:]


def _penalised(row: torch.Tensor, output: list[int], rep: float, presence: float, freq: float) -> torch.Tensor:
    row = row.clone()
    seen = set(PROMPT) | set(output)
    for t in seen:  # repetition: prompt and output tokens
        row[t] = row[t] / rep if row[t] > 0 else row[t] * rep
    for t in set(output):  # presence and frequency: output tokens only
        row[t] -= presence + freq * output.count(t)
    return row


def _top_k_top_p(row: torch.Tensor, k: int, p: float) -> torch.Tensor:
    order = row.argsort(descending=True)
    keep = torch.zeros_like(row, dtype=torch.bool)
    keep[order[:k]] = True
    masked = torch.where(keep, row, -math.inf)
    probs = masked.softmax(-1)
    mass = 0.0
    for t in order[:k].tolist():  # keep while the more likely tokens' mass is below p
        if mass >= p:
            keep[t] = False
        mass += probs[t].item()
    return torch.where(keep, row, -math.inf)


def _reference(mode: str, logits: torch.Tensor, output: list[int], params: dict) -> torch.Tensor:
    """One step's values [V] for ``mode`` from the HF logits, ``output`` = tokens before it."""
    if mode.startswith("raw"):
        values = logits
    else:
        values = _penalised(logits, output, params.get("repetition_penalty", 1.0),
                            params.get("presence_penalty", 0.0), params.get("frequency_penalty", 0.0))
        if params["temperature"] > 0:  # a random row: temperature, top-k, top-p
            values = _top_k_top_p(values / params["temperature"], params["top_k"], params["top_p"])
    return values if mode.endswith("_logits") else values.log_softmax(-1)


def _check(mode: str, completion, demo_hf_model, params: dict) -> None:
    tokens = list(completion.token_ids)
    assert len(tokens) == MAX_TOKENS and len(completion.logprobs) == MAX_TOKENS
    hf = _hf_logits(demo_hf_model, PROMPT + tokens[:-1])
    for i, step in enumerate(completion.logprobs):
        want = _reference(mode, hf[i], tokens[:i], params)
        assert tokens[i] in step
        top = sorted(step.items(), key=lambda kv: kv[1].rank)
        for token_id, lp in step.items():
            if math.isinf(want[token_id]):
                assert lp.logprob == -math.inf, (mode, i, token_id)
            else:
                assert lp.logprob == pytest.approx(want[token_id].item(), abs=2e-3), (mode, i, token_id)
        # the top-k columns are the mode's own top values, in order
        ranked = [lp.logprob for _, lp in top if lp.rank <= NUM_LOGPROBS]
        finite = want[torch.isfinite(want)].sort(descending=True).values[:NUM_LOGPROBS].tolist()
        assert ranked[:len(finite)] == pytest.approx(finite, abs=2e-3)
        assert math.isfinite(step[tokens[i]].logprob)  # the sampled token was never masked


@pytest.mark.parametrize("mode", MODES)
def test_random_request_values_match_an_independent_computation(engines, demo_hf_model, mode):
    _check(mode, engines[mode][1], demo_hf_model, RANDOM)


@pytest.mark.parametrize("mode", MODES)
def test_greedy_request_values_match_an_independent_computation(engines, demo_hf_model, mode):
    _check(mode, engines[mode][2], demo_hf_model, GREEDY)


def test_modes_differ_and_sample_the_same_tokens(engines):
    """The mode changes what is reported, never what is sampled; raw and processed differ."""
    tokens = {mode: list(engines[mode][1].token_ids) for mode in MODES}
    assert len({tuple(t) for t in tokens.values()}) == 1
    first = {mode: engines[mode][1].logprobs[0][tokens[mode][0]].logprob for mode in MODES}
    assert first["raw_logprobs"] != pytest.approx(first["processed_logprobs"], abs=1e-3)
    assert first["raw_logits"] != pytest.approx(first["processed_logits"], abs=1e-3)
    # the processed distribution is truncated: top-k (3 < NUM_LOGPROBS) leaves masked tokens at -inf
    for mode in ("processed_logprobs", "processed_logits"):
        for step in engines[mode][1].logprobs:
            assert sum(lp.logprob == -math.inf for lp in step.values()) >= NUM_LOGPROBS - 3


@pytest.mark.parametrize("mode", MODES)
def test_prompt_logprobs_stay_raw_logprobs(engines, demo_hf_model, mode):
    """vLLM's runner computes prompt logprobs as raw logprobs whatever the mode."""
    prompt_lps = engines[mode][3]
    assert prompt_lps[0] is None
    with torch.no_grad():
        want = demo_hf_model(torch.tensor([PROMPT])).logits[0].double().log_softmax(-1)
    for pos in range(1, len(PROMPT)):
        lp = prompt_lps[pos][PROMPT[pos]].logprob
        assert lp == pytest.approx(want[pos - 1, PROMPT[pos]].item(), abs=2e-3)


def test_beam_search_is_refused_under_logits_modes(engines):
    from pagedlm.beam_search import BeamSearchParams

    params = BeamSearchParams(beam_width=2, max_tokens=2)
    with pytest.raises(ValueError, match="logprobs_mode='raw_logits'"):
        engines["raw_logits"][0].beam_search([{"prompt_token_ids": PROMPT}], params)
    out = engines["processed_logprobs"][0].beam_search([{"prompt_token_ids": PROMPT}], params)
    assert len(out[0].sequences) == 2


def test_unknown_mode_is_refused(demo_checkpoint):
    from pagedlm import LLM

    with pytest.raises(Exception, match="logprobs"):
        LLM(str(demo_checkpoint), device="cpu", logprobs_mode="processed")


# ---- the samplers directly ------------------------------------------------------------------

V = 16


def _md(params, outputs=None):
    n = len(params)
    return build_sampling_metadata(params, [[0, 1]] * n, outputs or [[] for _ in range(n)], [None] * n, V,
                                   torch.device("cpu"))


def test_sampler_mixed_batch_processed_values():
    """A greedy row beside random ones reports its logits after the processors at temperature
    1 (vLLM: the random path's values); a random row after temperature, min-p, top-k, top-p."""
    torch.manual_seed(0)
    logits = torch.randn(3, V) * 3
    params = [SamplingParams(temperature=0.0, logprobs=2, repetition_penalty=1.5),
              SamplingParams(temperature=0.5, top_k=4, logprobs=2),
              SamplingParams(temperature=2.0, min_p=0.2, logprobs=2)]
    outs = {m: Sampler(logprobs_mode=m)(logits, _md(params)) for m in MODES}
    assert torch.equal(outs["raw_logits"].logprobs.logprobs, logits.gather(1, outs["raw_logits"].logprobs.token_ids))
    processed = outs["processed_logits"].logprobs
    greedy_want = logits[0].clone()
    for t in (0, 1):
        greedy_want[t] = greedy_want[t] / 1.5 if greedy_want[t] > 0 else greedy_want[t] * 1.5
    assert torch.allclose(processed.logprobs[0], greedy_want[processed.token_ids[0]])
    row1 = logits[1] / 0.5
    kth = row1.topk(4).values[-1]
    want1 = torch.where(row1 >= kth, row1, -math.inf)
    assert torch.equal(processed.logprobs[1], want1[processed.token_ids[1]])
    row2 = logits[2] / 2.0
    probs = row2.softmax(-1)
    want2 = torch.where(probs >= 0.2 * probs.max(), row2, -math.inf)
    assert torch.equal(processed.logprobs[2], want2[processed.token_ids[2]])
    lp = outs["processed_logprobs"].logprobs
    for row, want in enumerate((greedy_want, want1, want2)):
        assert torch.allclose(lp.logprobs[row], want.log_softmax(-1)[lp.token_ids[row]])
    # every mode samples the same tokens (no seed: the same RNG state each time)
    for m in MODES:
        torch.manual_seed(5)
        a = Sampler(logprobs_mode=m)(logits, _md(params)).sampled_token_ids
        torch.manual_seed(5)
        assert torch.equal(a, Sampler()(logits, _md(params)).sampled_token_ids)


def test_sampler_leaves_default_path_and_refuses_unknown_mode():
    logits = torch.randn(2, V)
    params = [SamplingParams(temperature=0.0, logprobs=3)] * 2
    out = Sampler()(logits, _md(params)).logprobs
    assert torch.allclose(out.logprobs, logits.log_softmax(-1).gather(1, out.token_ids))
    with pytest.raises(ValueError, match="logprobs_mode"):
        Sampler(logprobs_mode="logits")


@pytest.mark.parametrize("mode", MODES)
def test_rejection_sampler_bonus_rows_report_what_the_sampler_reports(mode):
    """A request with no drafts (one bonus row) verified by the rejection sampler gets the same
    values as the plain Sampler in every mode."""
    torch.manual_seed(1)
    logits = torch.randn(2, V) * 2
    params = [SamplingParams(temperature=0.8, top_k=5, top_p=0.8, logprobs=3, presence_penalty=0.4),
              SamplingParams(temperature=0.0, logprobs=3, repetition_penalty=1.3)]
    drafts = torch.tensor([-1, -1])
    out = rejection_sample(logits, drafts, drafts >= 0, _md(params, [[2, 3], [3]]), logprobs_mode=mode)
    plain = Sampler(logprobs_mode=mode)(logits, _md(params, [[2, 3], [3]]))
    # compare the top-3 columns (the sampled column may be a different random draw)
    assert torch.equal(out.logprobs.token_ids[:, 1:], plain.logprobs.token_ids[:, 1:])
    assert torch.allclose(out.logprobs.logprobs[:, 1:], plain.logprobs.logprobs[:, 1:], equal_nan=True)
