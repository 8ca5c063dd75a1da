"""--scheduling-policy priority end to end on CPU (the scheduler's own rules are in
test_scheduler.py): LLM.generate(priority=...) orders admission, the tokens do not change,
and a priority without the policy, or a list of the wrong length, is refused."""

from __future__ import annotations

import pytest

from pagedlm import LLM, SamplingParams

PROMPTS = [[5 + i, 17, 23 + i, 9] for i in range(4)]
PRIORITY = [3, 0, 2, 1]
KWARGS = dict(device="cpu", max_model_len=64, num_gpu_blocks_override=64, max_num_seqs=1)


def _run(llm: LLM, priority: list[int] | None) -> tuple[list[list[int]], list[int]]:
    """(token ids per prompt, prompt indices in the order they were first scheduled)."""
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False, priority=priority)
    order = sorted(range(len(outs)), key=lambda i: outs[i].metrics.first_scheduled_time)
    return [o.outputs[0].token_ids for o in outs], order


@pytest.fixture(scope="module")
def fcfs(llama_checkpoint: str) -> LLM:
    return LLM(llama_checkpoint, **KWARGS)


def test_priority_orders_admission_and_keeps_the_tokens(llama_checkpoint: str, fcfs: LLM) -> None:
    llm = LLM(llama_checkpoint, scheduling_policy="priority", **KWARGS)
    ids, order = _run(llm, PRIORITY)
    assert order == [1, 3, 2, 0]  # lowest priority value first (one request runs at a time)
    fcfs_ids, fcfs_order = _run(fcfs, None)
    assert fcfs_order == [0, 1, 2, 3] and ids == fcfs_ids
    _, order = _run(llm, None)  # all 0: arrival order
    assert order == [0, 1, 2, 3]


def test_priority_needs_the_policy_and_one_entry_per_prompt(fcfs: LLM) -> None:
    with pytest.raises(ValueError, match="priority scheduling is not enabled"):
        _run(fcfs, PRIORITY)
    with pytest.raises(ValueError, match="one per prompt"):
        _run(fcfs, [0, 0])
    assert _run(fcfs, [0] * len(PROMPTS))[1] == [0, 1, 2, 3]  # zeros are fine under fcfs
    assert not fcfs.llm_engine.has_unfinished_requests()  # nothing left queued by the refusals
