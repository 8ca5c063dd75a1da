"""repetition_detection (vLLM's RepetitionDetectionParams): a request ends, finish_reason
"repetition" and stop_reason "repetition_detected", once its output tokens end in a pattern of
min..max_pattern_size tokens repeated min_count times in a row."""

from __future__ import annotations

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.sampling_params import RepetitionDetectionParams

PROMPT = [11, 23, 5, 60, 2]  # greedy on the tiny checkpoint: ... 286, 426, 426, 426, 170, ...


def test_pattern_check() -> None:
    three = RepetitionDetectionParams(max_pattern_size=3, min_count=3)
    assert three.repeats([9, 1, 2, 1, 2, 1, 2])  # (1, 2) three times
    assert not three.repeats([9, 2, 1, 2, 1, 2])  # only twice whole
    assert three.repeats([5, 5, 5]) and not three.repeats([5, 5])
    assert three.repeats([0, 1, 2, 3, 1, 2, 3, 1, 2, 3])
    assert not RepetitionDetectionParams(max_pattern_size=2, min_count=3).repeats([0, 1, 2, 3, 1, 2, 3, 1, 2, 3])
    assert not RepetitionDetectionParams(max_pattern_size=3, min_pattern_size=2, min_count=3).repeats([4, 4, 4])
    assert not RepetitionDetectionParams().repeats([4, 4, 4, 4])  # max_pattern_size 0: off


@pytest.mark.parametrize("fields,match", [
    (dict(max_pattern_size=2, min_count=1), "min_count"),
    (dict(max_pattern_size=2, min_pattern_size=3, min_count=2), "min_pattern_size"),
    (dict(max_pattern_size=-1), "max_pattern_size"),
])
def test_bad_values_are_refused(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RepetitionDetectionParams(**fields)
    with pytest.raises(ValueError, match=match):
        SamplingParams(repetition_detection=fields)
    with pytest.raises(ValueError, match="repetition_detection"):
        SamplingParams(repetition_detection={"max_size": 3})


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    from pagedlm.demo import build_tiny_checkpoint

    return LLM(str(build_tiny_checkpoint(tmp_path_factory.mktemp("rep"))), device="cpu", max_model_len=128)


def _run(llm: LLM, **detection):
    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True,
                            repetition_detection=detection or None)
    return llm.generate([{"prompt_token_ids": PROMPT}], params, use_tqdm=False)[0].outputs[0]


def test_the_engine_stops_at_the_repetition(llm: LLM) -> None:
    plain = _run(llm)
    assert plain.finish_reason == "length" and len(plain.token_ids) == 60
    found = _run(llm, max_pattern_size=4, min_count=3)
    n = len(found.token_ids)
    assert (found.finish_reason, found.stop_reason) == ("repetition", "repetition_detected")
    assert n < 60 and found.token_ids == plain.token_ids[:n]  # the same tokens, up to the third repeat
    assert len(set(found.token_ids[-3:])) == 1
    # four repeats are never reached here; min_tokens puts the check off
    assert _run(llm, max_pattern_size=4, min_count=4).finish_reason == "length"
    later = llm.generate([{"prompt_token_ids": PROMPT}], SamplingParams(
        max_tokens=60, temperature=0.0, ignore_eos=True, min_tokens=n + 1,
        repetition_detection=RepetitionDetectionParams(max_pattern_size=4, min_count=3)), use_tqdm=False)
    assert len(later[0].outputs[0].token_ids) > n
