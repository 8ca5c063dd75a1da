"""The ops the LM-head + sampling CUDA graph replays equal the Sampler for plain rows."""

from __future__ import annotations

import pytest
import torch

from pagedlm.sample.metadata import build_sampling_metadata
from pagedlm.sample.sampler import Sampler
from pagedlm.sampling_params import SamplingParams
from pagedlm.worker.graph_sampling import is_plain, sample_plain

V = 300


@pytest.mark.parametrize("temperatures", [[0.0, 0.0], [1.0, 0.7, 1.3], [0.0, 0.8, 0.0, 1.0]])
def test_sample_plain_equals_sampler(temperatures: list[float]) -> None:
    logits = torch.randn(len(temperatures), V) * 3
    params = [SamplingParams(temperature=t) for t in temperatures]
    md = build_sampling_metadata(params, [[1]] * len(params), [[]] * len(params), [None] * len(params), V,
                                 torch.device("cpu"))
    for seed in range(5):
        torch.manual_seed(seed)
        want = Sampler()(logits, md).sampled_token_ids
        torch.manual_seed(seed)
        got = sample_plain(logits, torch.tensor(temperatures))
        assert torch.equal(got, want)


def test_is_plain_only_for_greedy_and_temperature() -> None:
    assert is_plain(SamplingParams(), V) and is_plain(SamplingParams(temperature=0.5, top_k=V), V)
    for kwargs in (dict(logprobs=1), dict(prompt_logprobs=0), dict(seed=3), dict(presence_penalty=0.1),
                   dict(repetition_penalty=1.1), dict(top_k=5), dict(top_p=0.9), dict(min_p=0.1),
                   dict(logit_bias={1: 1.0}), dict(allowed_token_ids=[1]), dict(min_tokens=2)):
        assert not is_plain(SamplingParams(**kwargs), V), kwargs


@pytest.mark.parametrize("shape", [(1, 300), (3, 128256), (2, 97), (40, 300)])
def test_row_argmax_is_argmax_with_first_index_on_ties(shape: tuple[int, int]) -> None:
    from pagedlm.sample.sampler import row_argmax

    x = torch.randn(*shape)
    x[0, 5] = x[0, shape[1] - 1] = x[0].max() + 1  # a tie across chunks: the first index wins
    if shape[0] > 1:
        x[1, 7] = x[1, 8] = x[1].max() + 1  # a tie inside a chunk
    assert torch.equal(row_argmax(x), x.argmax(dim=-1))
    assert row_argmax(x)[0] == 5
