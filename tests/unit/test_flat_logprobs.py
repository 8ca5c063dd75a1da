"""vLLM's FlatLogprobs (SamplingParams(flat_logprobs=True)): the engine's logprobs and prompt
logprobs in flat lists, reading exactly as the list of dicts it replaces, whole and streamed."""

from __future__ import annotations

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.logprobs import FlatLogprobs, Logprob
from pagedlm.sampling_params import RequestOutputKind

PROMPT = {"prompt_token_ids": [1, 5, 9, 14, 3, 22]}


def test_container_reads_like_the_list() -> None:
    flat = FlatLogprobs()
    flat.append(None)
    flat.append({7: Logprob(-0.5, 1, "a"), 3: Logprob(-1.5, 2, "b")})
    flat.append_position([4, 4, 9], [-0.1, -0.1, -2.0], [1, 1, 3], ["x", "x", None])
    assert len(flat) == 3 and flat[0] == {} and bool(flat)
    assert flat[1] == {7: Logprob(-0.5, 1, "a"), 3: Logprob(-1.5, 2, "b")}
    assert flat[-1] == {4: Logprob(-0.1, 1, "x"), 9: Logprob(-2.0, 3, None)}  # the repeat kept once
    assert list(flat[1:]) == [flat[1], flat[2]] and isinstance(flat[1:], FlatLogprobs)
    assert len(flat.token_ids) == 4  # flat columns, not a dict per position
    with pytest.raises(TypeError, match="append-only"):
        flat[0] = {}
    assert not FlatLogprobs()


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    from pagedlm.demo import build_tiny_checkpoint

    return LLM(str(build_tiny_checkpoint(tmp_path_factory.mktemp("flat"))), device="cpu", max_model_len=64,
               enable_prefix_caching=False)


def test_engine_gives_the_same_entries(llm: LLM) -> None:
    base = dict(max_tokens=6, temperature=0.0, logprobs=3, prompt_logprobs=2)
    nested = llm.generate(PROMPT, SamplingParams(**base), use_tqdm=False)[0]
    flat = llm.generate(PROMPT, SamplingParams(**base, flat_logprobs=True), use_tqdm=False)[0]
    assert isinstance(flat.outputs[0].logprobs, FlatLogprobs) and isinstance(flat.prompt_logprobs, FlatLogprobs)
    assert list(flat.outputs[0].logprobs) == nested.outputs[0].logprobs
    assert nested.prompt_logprobs[0] is None and flat.prompt_logprobs[0] == {}  # (vLLM's flat form)
    assert list(flat.prompt_logprobs)[1:] == nested.prompt_logprobs[1:]
    # streamed as deltas: each output's FlatLogprobs holds its own positions
    deltas = llm.generate(PROMPT, SamplingParams(**base, flat_logprobs=True, output_kind=RequestOutputKind.DELTA),
                          use_tqdm=False)
    assert all(isinstance(d.outputs[0].logprobs, FlatLogprobs) for d in deltas)
    assert [p for d in deltas for p in d.outputs[0].logprobs] == nested.outputs[0].logprobs
