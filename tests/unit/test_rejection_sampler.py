"""The rejection sampler is exact: whatever the draft distribution, every emitted token is
distributed as the target's processed distribution (temperature, top-k, top-p), checked by a
chi-square test on small hand-made distributions; greedy keeps the target's argmax; seeded
requests reproduce."""

from __future__ import annotations

import torch

from pagedlm.sample.metadata import build_sampling_metadata
from pagedlm.sampling_params import SamplingParams
from pagedlm.spec_decode.rejection_sampler import emitted_counts, rejection_sample

V = 5
NUM_REQS = 20_000
# chi-square critical values at p = 1e-4 (a correct sampler fails once in 10^4 runs)
CHI2_CRIT = {1: 15.14, 2: 18.42, 3: 21.11, 4: 23.51}

P0_LOGITS = torch.tensor([1.0, 2.0, 0.5, -1.0, 1.5])
P1_LOGITS = torch.tensor([0.0, -0.5, 2.5, 1.0, 0.2])
Q0 = torch.tensor([0.05, 0.1, 0.6, 0.2, 0.05])  # a draft far from the target
Q1 = torch.tensor([0.3, 0.3, 0.1, 0.1, 0.2])


def processed(logits: torch.Tensor, sp: SamplingParams) -> torch.Tensor:
    """The target distribution by hand: temperature, then top-k, then top-p."""
    probs = (logits / sp.temperature).softmax(-1)
    order = probs.argsort(descending=True)
    keep = torch.zeros(V, dtype=torch.bool)
    mass = 0.0
    for rank, t in enumerate(order.tolist()):
        if (sp.top_k > 0 and rank >= sp.top_k) or mass >= sp.top_p:
            break
        keep[t] = True
        mass += probs[t].item()
    probs = torch.where(keep, probs, 0.0)
    return probs / probs.sum()


def chi2(samples: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    counts = torch.bincount(samples, minlength=V).double()
    expected = probs.double() * len(samples)
    support = expected > 0
    assert counts[~support].sum() == 0, "a token outside the target's support was emitted"
    stat = ((counts[support] - expected[support]) ** 2 / expected[support]).sum().item()
    return stat, int(support.sum()) - 1


def run(sp: SamplingParams, q: list[torch.Tensor] | None, ngram_drafts: list[int] | None = None,
        generators: list[torch.Generator | None] | None = None, num_reqs: int = NUM_REQS):
    """num_reqs requests with 2 drafts each (rows: p0, p1, bonus p1). Returns (emitted token
    lists, per-request counts)."""
    torch.manual_seed(1234)
    logits = torch.stack([P0_LOGITS, P1_LOGITS, P1_LOGITS]).repeat(num_reqs, 1)  # [3R, V]
    if q is not None and ngram_drafts is None:
        d0 = torch.multinomial(q[0], num_reqs, replacement=True)
        d1 = torch.multinomial(q[1], num_reqs, replacement=True)
        draft_probs = torch.stack([q[0], q[1], torch.zeros(V)]).repeat(num_reqs, 1)
    else:  # fixed drafts (n-gram: point masses unless q is given)
        d0 = torch.full((num_reqs,), ngram_drafts[0])
        d1 = torch.full((num_reqs,), ngram_drafts[1])
        draft_probs = None if q is None else torch.stack([q[0], q[1], torch.zeros(V)]).repeat(num_reqs, 1)
    drafts = torch.stack([d0, d1, torch.full((num_reqs,), -1)], dim=1).reshape(-1)
    gens = generators or [None] * num_reqs
    md = build_sampling_metadata([sp] * (3 * num_reqs), [[1]] * (3 * num_reqs), [[]] * (3 * num_reqs),
                                 [g for g in gens for _ in range(3)], V, torch.device("cpu"))
    out = rejection_sample(logits, drafts, drafts >= 0, md, draft_probs)
    counts = emitted_counts(out.accepted.tolist(), [2] * num_reqs)
    tokens = out.tokens.view(num_reqs, 3)
    return tokens, torch.tensor(counts), out


def check_exact(sp: SamplingParams, q: list[torch.Tensor] | None, ngram: list[int] | None = None) -> None:
    tokens, counts, _ = run(sp, q, ngram)
    p0, p1 = processed(P0_LOGITS, sp), processed(P1_LOGITS, sp)
    stat, df = chi2(tokens[:, 0], p0)  # the first emitted token, accepted draft or not
    assert stat < CHI2_CRIT[df], (stat, df)
    # Given the first draft was accepted, the second emitted token is distributed as p1.
    second = tokens[counts >= 2, 1]
    assert len(second) > 1000
    stat, df = chi2(second, p1)
    assert stat < CHI2_CRIT[df], (stat, df)
    third = tokens[counts == 3, 2]  # the bonus, after two accepted drafts
    if len(third) > 1000:
        stat, df = chi2(third, p1)
        assert stat < CHI2_CRIT[df], (stat, df)


def test_draft_distribution_sampling_is_exact():
    check_exact(SamplingParams(temperature=1.0), [Q0, Q1])


def test_ngram_point_mass_drafts_are_exact():
    check_exact(SamplingParams(temperature=1.0), None, ngram=[1, 2])
    check_exact(SamplingParams(temperature=0.7), None, ngram=[2, 3])  # rarely-accepted drafts


def test_exact_with_temperature_top_k_top_p():
    check_exact(SamplingParams(temperature=0.8, top_k=3), [Q0, Q1])
    check_exact(SamplingParams(temperature=1.3, top_p=0.7), [Q0, Q1])
    check_exact(SamplingParams(temperature=1.0, top_k=4, top_p=0.9), None, ngram=[4, 0])


def test_draft_equal_to_target_accepts_everything():
    sp = SamplingParams(temperature=1.0)
    _, counts, _ = run(sp, [processed(P0_LOGITS, sp), processed(P1_LOGITS, sp)], num_reqs=2000)
    assert (counts == 3).all()


def test_greedy_keeps_the_argmax_prefix():
    sp = SamplingParams(temperature=0.0)
    # argmax p0 = 1, argmax p1 = 2: drafts [1, 2] all accepted + bonus 2; [1, 0] -> [1, 2]; [3, ..] -> [1]
    for drafts, expected in (([1, 2], [1, 2, 2]), ([1, 0], [1, 2]), ([3, 2], [1])):
        tokens, counts, _ = run(sp, None, drafts, num_reqs=4)
        assert all(tokens[r, : counts[r]].tolist() == expected for r in range(4))


def test_seeded_requests_reproduce_and_ignore_the_batch():
    sp = SamplingParams(temperature=1.0, seed=7)

    def seeded(num_reqs: int, seed: int) -> list[list[int]]:
        gens = [torch.Generator().manual_seed(seed) for _ in range(num_reqs)]
        tokens, counts, _ = run(sp, [Q0, Q1], [2, 3], generators=gens, num_reqs=num_reqs)
        return [tokens[r, : counts[r]].tolist() for r in range(num_reqs)]

    a, b = seeded(64, 7), seeded(64, 7)
    assert a == b
    # A seeded request draws only from its own generator: the same in a batch of one.
    assert seeded(1, 7)[0] == a[0]
    different = [seeded(4, s) for s in range(8, 24)]
    assert any(d != a[:4] for d in different)


def test_logprobs_are_the_targets_raw_logprobs():
    sp = SamplingParams(temperature=1.0, logprobs=2)
    _, _, out = run(sp, [Q0, Q1], num_reqs=8)
    raw = torch.stack([P0_LOGITS, P1_LOGITS, P1_LOGITS]).repeat(8, 1).log_softmax(-1)
    expected = raw.gather(1, out.tokens.unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(out.logprobs.logprobs[:, 0], expected)
    assert out.logprobs.token_ids.shape == (24, 3)
