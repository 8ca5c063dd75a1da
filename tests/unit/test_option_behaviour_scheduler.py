"""The scheduling options at run time (test_option_walk.py shows each one reaches the config;
these show the engine built from it honours it): the steps the model runs are recorded, and
their requests and tokens must keep to the option; the tokens equal the default engine's."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest

from pagedlm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
KWARGS = dict(device="cpu", max_model_len=128)


def _prompts(*lengths: int) -> list[list[int]]:
    """Distinct prompts (no prefix-cache hits between them) of these lengths."""
    return [[(i * 37 + 101 * k) % 500 + 5 for i in range(n)] for k, n in enumerate(lengths)]


def _greedy(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], GREEDY, use_tqdm=False)
    return [o.outputs[0].token_ids for o in outs]


@contextmanager
def _steps(llm: LLM) -> Iterator[list[dict[str, int]]]:
    """The steps the model runs meanwhile, each as request id -> tokens scheduled for it."""
    executor = llm.llm_engine.engine_core.executor
    steps: list[dict[str, int]] = []
    run = executor.execute_model

    def recording(sched):
        steps.append(dict(sched.num_scheduled_tokens))
        return run(sched)

    executor.execute_model = recording
    try:
        yield steps
    finally:
        del executor.execute_model  # the class's method again


def _greedy_steps(llm: LLM, prompts: list[list[int]]) -> tuple[list[list[int]], list[dict[str, int]]]:
    with _steps(llm) as steps:
        return _greedy(llm, prompts), steps


def _prompt_chunks(steps: list[dict[str, int]]) -> list[list[int]]:
    """Per request, in the order first scheduled: the tokens of each step that gave it more than
    one, i.e. its prompt's chunks (a decode step gives one; no chunk here is a single token)."""
    ids = dict.fromkeys(r for step in steps for r in step)
    return [[step[r] for step in steps if step.get(r, 1) > 1] for r in ids]


@pytest.fixture(scope="module")
def default_llm(llama_checkpoint: str) -> LLM:
    return LLM(llama_checkpoint, **KWARGS)


def test_max_num_seqs_caps_the_requests_in_a_step(llama_checkpoint: str, default_llm: LLM) -> None:
    prompts = _prompts(*range(5, 13))
    ids, steps = _greedy_steps(LLM(llama_checkpoint, max_num_seqs=3, **KWARGS), prompts)
    default_ids, default_steps = _greedy_steps(default_llm, prompts)
    assert ids == default_ids
    assert max(len(step) for step in steps) == 3
    assert max(len(step) for step in default_steps) == 8  # the default runs all eight at once


def test_max_num_batched_tokens_caps_every_step(llama_checkpoint: str, default_llm: LLM) -> None:
    prompts = _prompts(50, 40, 30, 7)
    ids, steps = _greedy_steps(LLM(llama_checkpoint, max_num_batched_tokens=64, **KWARGS), prompts)
    assert ids == _greedy(default_llm, prompts)
    totals = [sum(step.values()) for step in steps]
    assert max(totals) == 64 and totals[0] == 64  # 127 prompt tokens: the first step takes 64 of them


def test_without_chunked_prefill_prompts_run_whole(llama_checkpoint: str, default_llm: LLM) -> None:
    prompts = _prompts(40, 40, 30)
    budget = dict(device="cpu", max_model_len=64, max_num_batched_tokens=64)
    chunked_ids, chunked = _greedy_steps(LLM(llama_checkpoint, **budget), prompts)
    whole_ids, whole = _greedy_steps(LLM(llama_checkpoint, enable_chunked_prefill=False, **budget), prompts)
    assert whole_ids == chunked_ids == _greedy(default_llm, prompts)
    # Chunked, the second prompt gets the 24 tokens left in the first step; whole prompts only,
    # it waits for the next step.
    assert _prompt_chunks(chunked) == [[40], [24, 16], [30]]
    assert _prompt_chunks(whole) == [[40], [40], [30]]


def test_long_prefill_token_threshold_chunks_long_prompts(llama_checkpoint: str, default_llm: LLM) -> None:
    prompts = _prompts(50, 5)
    ids, steps = _greedy_steps(LLM(llama_checkpoint, long_prefill_token_threshold=16, **KWARGS), prompts)
    assert ids == _greedy(default_llm, prompts)
    assert _prompt_chunks(steps) == [[16, 16, 16, 2], [5]]
    assert sorted(steps[0].values()) == [5, 16]  # the short prompt runs beside the long one's first chunk


def test_async_scheduling_returns_a_step_late(llama_checkpoint: str, default_llm: LLM) -> None:
    """With async scheduling the engine launches step N+1 before it collects step N: each engine
    step hands back the tokens of the step before (the first, nothing), and the tokens do not
    change."""
    prompt = _prompts(12)[0]
    expected = _greedy(default_llm, [prompt])[0]
    for async_scheduling in (False, True):
        engine = LLM(llama_checkpoint, async_scheduling=async_scheduling, **KWARGS).llm_engine
        engine.add_request("r", {"prompt_token_ids": prompt}, GREEDY)
        seen = []  # per engine step: the tokens the request has so far
        while engine.has_unfinished_requests():
            outs = engine.step()
            seen.append(list(outs[0].outputs[0].token_ids) if outs else None)
        late = [None] if async_scheduling else []
        assert seen[:len(late) + 6] == late + [expected[:n] for n in range(1, 7)]


def test_max_model_len_caps_prompts_and_outputs(llama_checkpoint: str) -> None:
    from pagedlm.engine.input_processor import InvalidRequestError

    llm = LLM(llama_checkpoint, device="cpu", max_model_len=40)
    with pytest.raises(InvalidRequestError, match="maximum model length"):
        llm.generate({"prompt_token_ids": _prompts(41)[0]}, GREEDY, use_tqdm=False)
    out = llm.generate({"prompt_token_ids": _prompts(36)[0]}, GREEDY, use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 4 and out.finish_reason == "length"  # 36 + 4 = 40 tokens
