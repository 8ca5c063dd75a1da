"""Sampler tests: every filter/penalty against a direct computation on the same logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagedlm.sample import Sampler, build_sampling_metadata, gather_logprobs
from pagedlm.sample.sampler import apply_logits_processors, apply_min_p, apply_top_k_only, apply_top_k_top_p
from pagedlm.sampling_params import SamplingParams

V = 32
CPU = torch.device("cpu")


def _metadata(params, outputs=None, prompts=None, generators=None, vocab_size=V):
    num_rows = len(params)
    return build_sampling_metadata(
        params,
        prompts if prompts is not None else [[] for _ in range(num_rows)],
        outputs if outputs is not None else [[] for _ in range(num_rows)],
        generators if generators is not None else [None] * num_rows,
        vocab_size,
        CPU,
    )


def _sample(params, logits, **kw):
    return Sampler()(logits, _metadata(params, **kw))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _ref_keep(row: np.ndarray, k: int, p: float) -> set[int]:
    """Top-k then top-p on one row of logits, done plainly in float64."""
    order = np.argsort(-row)
    kept = order[:k] if 0 < k < len(row) else order
    probs = _softmax(row[kept].astype(np.float64))
    mass_before = np.cumsum(probs) - probs
    return {int(t) for t in kept[mass_before < p]}


# ---------------------------------------------------------------------------- greedy


def test_greedy_is_argmax_and_skips_everything_else():
    torch.manual_seed(0)
    logits = torch.randn(8, V)
    params = [SamplingParams(temperature=0.0) for _ in range(8)]
    md = _metadata(params)
    assert md.all_greedy and not md.all_random
    assert md.top_k is None and md.top_p is None and md.min_p is None and md.penalties is None
    out = Sampler()(logits, md)
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))
    assert out.sampled_token_ids.dtype == torch.int64
    assert out.logprobs is None


def test_mixed_batch_greedy_rows_stay_argmax():
    torch.manual_seed(1)
    logits = torch.randn(16, V) * 0.3  # flat: random rows rarely pick the argmax
    params = [SamplingParams(temperature=0.0 if i % 2 == 0 else 1.0) for i in range(16)]
    random_hits_argmax = []
    for _ in range(5):
        sampled = _sample(params, logits).sampled_token_ids
        assert torch.equal(sampled[0::2], logits[0::2].argmax(dim=-1))
        random_hits_argmax.append(bool((sampled[1::2] == logits[1::2].argmax(dim=-1)).all()))
    assert not all(random_hits_argmax)


def test_input_logits_not_modified():
    torch.manual_seed(2)
    logits = torch.randn(3, V)
    before = logits.clone()
    params = [
        SamplingParams(temperature=0.0, logit_bias={1: 5.0}, repetition_penalty=1.3),
        SamplingParams(temperature=0.9, top_k=4, top_p=0.8, min_p=0.05, allowed_token_ids=[1, 2, 3, 4, 5]),
        SamplingParams(temperature=0.5, presence_penalty=1.0),
    ]
    _sample(params, logits, outputs=[[1], [2], [3]], prompts=[[4], [5], [6]])
    assert torch.equal(logits, before)


# ---------------------------------------------------------------------------- top-k / top-p / min-p


def test_top_k_draws_only_from_top_k_and_only_in_its_rows():
    torch.manual_seed(3)
    row = torch.randn(V)
    logits = row.repeat(4000, 1)
    params = [SamplingParams(temperature=1.0, top_k=5 if i % 2 == 0 else 0) for i in range(4000)]
    md = _metadata(params)
    assert md.filter_rows is not None and md.top_p is None  # the no-sort path, on half the rows
    sampled = Sampler()(logits, md).sampled_token_ids
    top5 = set(torch.topk(row, 5).indices.tolist())
    assert set(sampled[0::2].tolist()) == top5
    assert not set(sampled[1::2].tolist()) <= top5  # rows without top-k are unfiltered


def test_top_k_only_matches_reference_with_per_row_k():
    torch.manual_seed(4)
    logits = torch.randn(6, V)
    ks = [1, 3, V, 7, 2, V]
    out = apply_top_k_only(logits.clone(), torch.tensor(ks), max_top_k=7)
    for i, k in enumerate(ks):
        kept = set(torch.isfinite(out[i]).nonzero().flatten().tolist())
        assert kept == _ref_keep(logits[i].numpy(), k, 1.0), f"row {i}"
        assert torch.equal(out[i][torch.isfinite(out[i])], logits[i][torch.isfinite(out[i])])


@pytest.mark.parametrize("with_top_k", [False, True])
def test_top_p_keeps_smallest_set_reaching_p(with_top_k: bool):
    rng = np.random.default_rng(5)
    logits = torch.from_numpy(rng.normal(size=(40, V)).astype(np.float32) * 2)
    ps = rng.choice([0.1, 0.3, 0.5, 0.75, 0.9, 0.97, 1.0], size=40)
    ks = rng.choice([0, 2, 5, 10], size=40) if with_top_k else np.zeros(40, dtype=int)
    top_k = torch.tensor([k if k > 0 else V for k in ks]) if with_top_k else None
    out = apply_top_k_top_p(logits.clone(), top_k, torch.tensor(ps, dtype=torch.float32), int(max(ks)))
    sizes = []
    for i in range(40):
        kept = set(torch.isfinite(out[i]).nonzero().flatten().tolist())
        expected = _ref_keep(logits[i].numpy(), int(ks[i]), float(ps[i]))
        assert kept == expected, f"row {i}: p={ps[i]} k={ks[i]}"
        sizes.append(len(kept))
    assert min(sizes) == 1 and max(sizes) > 5  # the cases really vary


def test_top_p_sampling_stays_in_nucleus():
    torch.manual_seed(6)
    row = torch.randn(V)
    logits = row.repeat(3000, 1)
    params = [SamplingParams(temperature=1.0, top_p=0.6) for _ in range(3000)]
    sampled = set(_sample(params, logits).sampled_token_ids.tolist())
    assert sampled == _ref_keep(row.numpy(), 0, 0.6)


def test_min_p_applies_after_temperature():
    row = torch.full((V,), -10.0)
    row[:5] = torch.tensor([5.0, 4.0, 2.0, 1.5, 0.0])
    # T=2, min_p=0.1: keep tokens with (l - max) / 2 >= ln 0.1, i.e. l >= 0.39 -> {0, 1, 2, 3}.
    # Without temperature first it would be l >= 2.7 -> {0, 1}.
    temperature, min_p = 2.0, 0.1
    probs = _softmax(row.numpy().astype(np.float64) / temperature)
    expected = {int(t) for t in np.nonzero(probs >= min_p * probs.max())[0]}
    assert expected == {0, 1, 2, 3}
    masked = apply_min_p(row.unsqueeze(0) / temperature, torch.tensor([min_p]))
    assert set(torch.isfinite(masked[0]).nonzero().flatten().tolist()) == expected
    torch.manual_seed(7)
    params = [SamplingParams(temperature=temperature, min_p=min_p) for _ in range(4000)]
    sampled = set(_sample(params, row.repeat(4000, 1)).sampled_token_ids.tolist())
    assert sampled == expected


# ---------------------------------------------------------------------------- penalties


def _ref_penalties(row: np.ndarray, prompt: list[int], output: list[int], rep: float, freq: float, pres: float):
    row = row.astype(np.float64).copy()
    for t in set(prompt) | set(output):
        row[t] = row[t] / rep if row[t] > 0 else row[t] * rep
    for t in set(output):
        row[t] -= freq * output.count(t) + pres
    return row


def test_penalties_match_hand_computation():
    torch.manual_seed(8)
    logits = torch.randn(4, V) * 2
    prompts = [[1, 2, 3, 10], [7, 7], [5], [0, 1, 2]]
    outputs = [[3, 4, 4, 11], [5, 5, 5, 6], [5, 9], [2, 2, 30]]
    settings = [(1.5, 0.0, 0.0), (1.0, 0.5, 0.3), (1.0, 0.0, 0.0), (0.7, -0.4, 1.2)]  # (rep, freq, pres)
    params = [SamplingParams(temperature=0.0, repetition_penalty=r, frequency_penalty=f, presence_penalty=p)
              for r, f, p in settings]
    md = _metadata(params, outputs=outputs, prompts=prompts)
    processed = apply_logits_processors(logits, md)
    for i, (r, f, p) in enumerate(settings):
        expected = _ref_penalties(logits[i].numpy(), prompts[i], outputs[i], r, f, p)
        np.testing.assert_allclose(processed[i].numpy(), expected, rtol=1e-5, atol=1e-5, err_msg=f"row {i}")
    assert not torch.equal(processed[0], logits[0]) and torch.equal(processed[2], logits[2])
    sampled = Sampler()(logits, md).sampled_token_ids
    assert torch.equal(sampled, processed.argmax(dim=-1))


def test_penalty_changes_greedy_choice():
    logits = torch.zeros(1, V)
    logits[0, 3], logits[0, 4] = 2.0, 1.5
    params = [SamplingParams(temperature=0.0, frequency_penalty=0.3)]
    assert _sample(params, logits, outputs=[[3]]).sampled_token_ids.item() == 3  # 1.7 > 1.5
    assert _sample(params, logits, outputs=[[3, 3]]).sampled_token_ids.item() == 4  # 1.4 < 1.5


# ---------------------------------------------------------------------------- bias / allowed / bad words / min_tokens


def test_logit_bias_forces_token():
    torch.manual_seed(9)
    logits = torch.randn(1, V)
    target = int(logits.argmin())
    greedy = [SamplingParams(temperature=0.0, logit_bias={target: 100.0})]
    assert _sample(greedy, logits).sampled_token_ids.item() == target
    params = [SamplingParams(temperature=1.0, logit_bias={target: 100.0}) for _ in range(500)]
    assert set(_sample(params, logits.repeat(500, 1)).sampled_token_ids.tolist()) == {target}
    top = int(logits.argmax())
    banned = [SamplingParams(temperature=0.0, logit_bias={top: -100.0})]
    assert _sample(banned, logits).sampled_token_ids.item() == int(logits[0].topk(2).indices[1])


def test_allowed_token_ids_restrict():
    logits = torch.zeros(2000, V)
    logits[:, 0] = 5.0  # the model's favourite is not allowed
    allowed = [3, 7, 11]
    params = [SamplingParams(temperature=1.0, allowed_token_ids=allowed) for _ in range(1000)]
    params += [SamplingParams(temperature=1.0) for _ in range(1000)]
    sampled = _sample(params, logits).sampled_token_ids
    assert set(sampled[:1000].tolist()) == set(allowed)
    assert 0 in set(sampled[1000:].tolist())  # unrestricted rows unaffected
    logits1 = torch.zeros(1, V)
    logits1[0, 0], logits1[0, 7] = 5.0, 1.0
    greedy = [SamplingParams(temperature=0.0, allowed_token_ids=allowed)]
    assert _sample(greedy, logits1).sampled_token_ids.item() == 7


def _banned(params, outputs):
    processed = apply_logits_processors(torch.zeros(len(params), V), _metadata(params, outputs=outputs))
    return [set(torch.isinf(row).nonzero().flatten().tolist()) for row in processed]


def test_bad_words_ban_last_token_when_prefix_matches():
    sp = SamplingParams(temperature=0.0)
    sp.bad_words_token_ids = [[9], [4, 5], [1, 2, 6]]
    assert _banned([sp], [[]]) == [{9}]  # a single-token word is always banned
    assert _banned([sp], [[8, 4]]) == [{9, 5}]
    assert _banned([sp], [[8, 2]]) == [{9}]  # prefix [1, 2] not matched
    assert _banned([sp], [[1, 2]]) == [{9, 6}]
    assert _banned([sp], [[1, 2, 4]]) == [{9, 5}]
    logits = torch.zeros(1, V)
    logits[0, 6], logits[0, 3] = 3.0, 2.0
    assert _sample([sp], logits, outputs=[[1, 2]]).sampled_token_ids.item() == 3
    assert _sample([sp], logits, outputs=[[0, 2]]).sampled_token_ids.item() == 6


def test_min_tokens_masks_stop_ids_until_reached():
    sp = SamplingParams(temperature=0.0, min_tokens=3, stop_token_ids=[8])
    sp.all_stop_token_ids = {8, 2}  # + EOS, as the engine fills it
    assert _banned([sp, sp, sp], [[1], [1, 1], [1, 1, 1]]) == [{2, 8}, {2, 8}, set()]
    logits = torch.zeros(1, V)
    logits[0, 2], logits[0, 5] = 4.0, 1.0
    assert _sample([sp], logits, outputs=[[1, 1]]).sampled_token_ids.item() == 5
    assert _sample([sp], logits, outputs=[[1, 1, 1]]).sampled_token_ids.item() == 2


# ---------------------------------------------------------------------------- seeds


def _seeded_run(target: SamplingParams, seed: int, position: int, others: list[SamplingParams], steps: int):
    """Target row at `position` among `others` (some seeded too); returns its tokens."""
    generator = torch.Generator().manual_seed(seed)
    other_gens = [torch.Generator().manual_seed(100 + i) if sp.seed is not None else None
                  for i, sp in enumerate(others)]
    tokens = []
    for step in range(steps):
        step_logits = torch.randn(V, generator=torch.Generator().manual_seed(1000 + step)) * 0.5
        params = others[:position] + [target] + others[position:]
        gens = other_gens[:position] + [generator] + other_gens[position:]
        logits = torch.randn(len(params), V)
        logits[position] = step_logits
        out = _sample(params, logits, generators=gens)
        tokens.append(out.sampled_token_ids[position].item())
    return tokens


@pytest.mark.parametrize("target", [SamplingParams(temperature=0.8, seed=42),
                                    SamplingParams(temperature=0.8, top_p=0.9, top_k=20, seed=42)])
def test_seeded_row_reproducible_in_any_batch(target: SamplingParams):
    others = [SamplingParams(temperature=1.0), SamplingParams(temperature=0.0),
              SamplingParams(temperature=1.2, seed=7), SamplingParams(temperature=0.7, top_p=0.5)]
    torch.manual_seed(10)
    alone = _seeded_run(target, 42, 0, [], steps=12)
    torch.manual_seed(11)
    first = _seeded_run(target, 42, 0, others, steps=12)
    torch.manual_seed(12)
    last = _seeded_run(target, 42, 3, others[:3], steps=12)
    torch.manual_seed(13)
    middle = _seeded_run(target, 42, 2, others, steps=12)
    assert alone == first == last == middle
    assert _seeded_run(target, 43, 0, [], steps=12) != alone


# ---------------------------------------------------------------------------- logprobs


def test_logprobs_are_raw_with_sampled_token_first():
    torch.manual_seed(14)
    logits = torch.randn(3, V)
    forced = int(logits[0].argmin())
    params = [
        SamplingParams(temperature=0.0, logprobs=3, logit_bias={forced: 100.0}),
        SamplingParams(temperature=0.5, top_k=4, presence_penalty=2.0, logprobs=5),
        SamplingParams(temperature=1.0),
    ]
    md = _metadata(params, outputs=[[1], [2], [3]])
    assert md.max_num_logprobs == 5
    out = Sampler()(logits, md)
    lp = out.logprobs
    raw = torch.log_softmax(logits, dim=-1)
    sampled = out.sampled_token_ids
    assert sampled[0].item() == forced
    assert lp.token_ids.shape == (3, 6) and lp.logprobs.shape == (3, 6) and lp.ranks.shape == (3,)
    assert lp.token_ids.dtype == torch.int64 and lp.logprobs.dtype == torch.float32
    assert torch.equal(lp.token_ids[:, 0], sampled)
    torch.testing.assert_close(lp.logprobs[:, 0], raw.gather(1, sampled[:, None])[:, 0])
    top = raw.topk(5, dim=-1)
    assert torch.equal(lp.token_ids[:, 1:], top.indices)
    torch.testing.assert_close(lp.logprobs[:, 1:], top.values)
    expected_ranks = [1 + int((raw[i] > raw[i, sampled[i]]).sum()) for i in range(3)]
    assert lp.ranks.tolist() == expected_ranks
    assert lp.ranks[0].item() == V  # forced by bias, but the raw model thinks it is the worst


@pytest.mark.parametrize("k", [0, 1, 4])
def test_gather_logprobs_against_numpy(k: int):
    rng = np.random.default_rng(15)
    logprobs = torch.log_softmax(torch.from_numpy(rng.normal(size=(5, V)).astype(np.float32)), dim=-1)
    targets = torch.tensor([0, 5, 31, 17, 9])
    out = gather_logprobs(logprobs, targets, k)
    assert out.token_ids.shape == (5, k + 1)
    for i in range(5):
        row = logprobs[i].numpy()
        order = np.argsort(-row)
        assert out.ranks[i].item() == int(np.nonzero(order == targets[i].item())[0][0]) + 1
        assert out.token_ids[i].tolist() == [targets[i].item()] + order[:k].tolist()
        np.testing.assert_allclose(out.logprobs[i].numpy(), row[[targets[i].item()] + order[:k].tolist()])


# ---------------------------------------------------------------------------- distribution


def test_temperature_sampling_matches_softmax_frequencies():
    vocab, draws, temperature, tol = 8, 20000, 0.7, 0.015
    row = torch.linspace(-2.0, 2.0, vocab)
    expected = _softmax(row.numpy().astype(np.float64) / temperature)
    assert np.abs(expected - _softmax(row.numpy().astype(np.float64))).max() > 3 * tol  # T matters
    torch.manual_seed(16)
    params = [SamplingParams(temperature=temperature) for _ in range(draws)]
    md = _metadata(params, vocab_size=vocab)
    sampled = Sampler()(row.repeat(draws, 1), md).sampled_token_ids
    freqs = np.bincount(sampled.numpy(), minlength=vocab) / draws
    assert np.abs(freqs - expected).max() < tol, (freqs, expected)


def test_seeded_sampling_matches_softmax_frequencies():
    """One seeded request over many steps draws from the right distribution too."""
    vocab, steps, tol = 6, 6000, 0.02
    row = torch.tensor([[1.0, 0.5, 0.0, -0.5, 2.0, -3.0]])
    expected = _softmax(row[0].numpy().astype(np.float64))
    md = _metadata([SamplingParams(temperature=1.0, seed=3)], generators=[torch.Generator().manual_seed(3)],
                   vocab_size=vocab)
    sampler = Sampler()
    counts = np.zeros(vocab)
    for _ in range(steps):
        counts[sampler(row, md).sampled_token_ids.item()] += 1
    assert np.abs(counts / steps - expected).max() < tol


# ---------------------------------------------------------------------------- CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_seeds_hold():
    cuda = torch.device("cuda")
    torch.manual_seed(17)
    logits = torch.randn(6, V) * 2
    params = [
        SamplingParams(temperature=0.0, repetition_penalty=1.4, frequency_penalty=0.5, logprobs=2),
        SamplingParams(temperature=0.0, logit_bias={3: 4.0}, allowed_token_ids=[1, 3, 5, 30], min_tokens=4),
        SamplingParams(temperature=0.0, presence_penalty=-1.0, logprobs=4),
        SamplingParams(temperature=0.9, top_k=6, top_p=0.8, min_p=0.02, seed=5),
        SamplingParams(temperature=1.1, top_p=0.7),
        SamplingParams(temperature=0.6),
    ]
    params[1].all_stop_token_ids = {5}
    params[2].bad_words_token_ids = [[7], [2, 9]]
    prompts, outputs = [[1, 2, 3], [4], [5, 6], [7], [8], [9]], [[3, 3, 2], [1], [2], [1], [], [4]]

    def run(device, position=3):
        gens = [None] * 6
        gens[position] = torch.Generator(device=device).manual_seed(5)
        md = build_sampling_metadata(params, prompts, outputs, gens, V, device)
        return md, Sampler()(logits.to(device), md)

    md_cpu, out_cpu = run(CPU)
    md_gpu, out_gpu = run(cuda)
    torch.testing.assert_close(apply_logits_processors(logits.to(cuda), md_gpu).cpu(),
                               apply_logits_processors(logits, md_cpu))
    assert torch.equal(out_gpu.sampled_token_ids[:3].cpu(), out_cpu.sampled_token_ids[:3])
    torch.testing.assert_close(out_gpu.logprobs.logprobs[:, 0].cpu(),
                               torch.log_softmax(logits, -1).gather(1, out_gpu.sampled_token_ids.cpu()[:, None])[:, 0])
    seeded = []
    for _ in range(3):
        gen = torch.Generator(device=cuda).manual_seed(5)
        md = build_sampling_metadata([params[3]], [[7]], [[1]], [gen], V, cuda)
        seeded.append([Sampler()(logits[3:4].to(cuda), md).sampled_token_ids.item() for _ in range(8)])
    gen = torch.Generator(device=cuda).manual_seed(5)
    mixed = []
    for _ in range(8):
        gens = [None, None, None, gen, None, None]
        md = build_sampling_metadata(params, prompts, outputs, gens, V, cuda)
        mixed.append(Sampler()(logits.to(cuda), md).sampled_token_ids[3].item())
    assert seeded[0] == seeded[1] == mixed


def test_sampling_params_clone_shares_nothing_mutable() -> None:
    from pagedlm.sampling_params import StructuredOutputsParams

    p = SamplingParams(temperature=0.7, stop=["a"], stop_token_ids=[3], logit_bias={1: 2.0}, bad_words=["x"],
                       structured_outputs=StructuredOutputsParams(regex="a+"), allowed_token_ids=[1, 2])
    p.bad_words_token_ids = [[1, 2]]
    q = p.clone()
    assert q == p and type(q) is SamplingParams
    for name in ("stop", "stop_token_ids", "logit_bias", "bad_words", "structured_outputs", "allowed_token_ids",
                 "all_stop_token_ids", "bad_words_token_ids"):
        assert getattr(q, name) is not getattr(p, name), name
    assert q.bad_words_token_ids[0] is not p.bad_words_token_ids[0]
    q.stop.append("b")
    q.logit_bias[5] = 1.0
    assert p.stop == ["a"] and p.logit_bias == {1: 2.0}
