"""The persistent batch: rows added, removed and compacted, and its state equal to a
from-scratch rebuild from per-request lists after every step of a random workload."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from pagedlm.sample.penalties import token_bin_counts
from pagedlm.sampling_params import SamplingParams
from pagedlm.worker.input_batch import _padded_block_tables
from pagedlm.worker.persistent_batch import PersistentBatch

VOCAB = 50


def _batch(max_reqs: int = 8) -> PersistentBatch:
    return PersistentBatch(max_reqs, max_model_len=64, max_blocks_per_seq=16, vocab_size=VOCAB,
                           device=torch.device("cpu"))


def test_rows_added_removed_and_condensed() -> None:
    b = _batch()
    for i in range(4):
        assert b.add(f"r{i}", [1, 2, 3], [], [10 + i], 0, SamplingParams()) == i
    b.remove("r1")
    b.remove("r2")
    assert b.add("r4", [5], [], [20, 21], 0, SamplingParams()) == 1  # the first hole is reused
    assert b.condense() == [(3, 2)]  # the last row fills the remaining hole
    assert b.num_rows == 3 and b.req_ids[:3] == ["r0", "r4", "r3"] and b.row_of["r3"] == 2
    assert b.block_table[2, 0] == 13 and b.block_table[3].sum() == 0 and b.num_blocks[3] == 0
    np.testing.assert_array_equal(b.block_tables(b.rows_of(["r4", "r3"])), [[20, 21], [13, 0]])
    assert b.remove("unknown") is None
    with pytest.raises(ValueError, match="already has row"):
        b.add("r0", [1], [], [], 0, SamplingParams())


def test_full_batch_and_oversized_request_are_refused() -> None:
    b = _batch(max_reqs=2)
    b.add("a", [1], [], [], 0, None)
    b.add("b", [1], [], [], 0, None)
    with pytest.raises(RuntimeError, match="full"):
        b.add("c", [1], [], [], 0, None)
    b.remove("a")
    with pytest.raises(ValueError, match="rows hold 64"):
        b.add("d", list(range(65)), [], [], 0, None)


def test_record_sampled_skips_rejected_drafts() -> None:
    b = _batch()
    b.add("a", [1, 2], [3], [], 0, SamplingParams(frequency_penalty=0.5))
    rows = torch.tensor([0])
    b.record_sampled(rows, torch.tensor([[3, 4, -1]]))  # k = 3 drafts, the last one rejected
    counts, mask = b.penalty_tensors(rows)
    assert counts[0, 3] == 2 and counts[0, 4] == 1 and counts[0].sum() == 3 and mask is None


class _Ref:
    """The from-scratch oracle: plain per-request lists."""

    def __init__(self, prompt: list[int], params: SamplingParams) -> None:
        self.prompt, self.output, self.blocks, self.params, self.computed = prompt, [], [], params, 0


def _check_equal(b: PersistentBatch, refs: dict[str, _Ref]) -> None:
    assert b.num_rows == len(refs) and set(b.row_of) == set(refs)
    req_ids = list(refs)
    rows = b.rows_of(req_ids)
    if any(refs[r].blocks for r in req_ids):
        expected = _padded_block_tables([refs[r].blocks or [0] for r in req_ids])
        got = b.block_tables(rows)
        np.testing.assert_array_equal(got[:, : expected.shape[1]], expected)
        assert not got[:, expected.shape[1]:].any()
    for r, row in zip(req_ids, rows):
        ref = refs[r]
        tokens = ref.prompt + ref.output
        np.testing.assert_array_equal(b.token_ids[row, : b.num_tokens[row]], tokens)
        assert b.num_computed_tokens[row] == ref.computed and b.temperature[row] == np.float32(ref.params.temperature)
    penalised = [r for r in req_ids if b.penalised[b.row_of[r]]]
    if penalised:
        counts, mask = b.penalty_tensors(torch.from_numpy(b.rows_of(penalised)))
        padded = torch.tensor(_pad([refs[r].output for r in penalised]))
        torch.testing.assert_close(counts, token_bin_counts(padded, VOCAB, torch.int32))
        rep = [r for r in penalised if refs[r].params.repetition_penalty != 1.0]
        for r in rep:
            want = torch.zeros(VOCAB, dtype=torch.bool)
            want[refs[r].prompt] = True
            assert torch.equal(mask[penalised.index(r)], want)


def _pad(rows: list[list[int]]) -> list[list[int]]:
    width = max(map(len, rows), default=0)
    return [row + [VOCAB] * (width - len(row)) for row in rows]


def _random_params(rng: random.Random) -> SamplingParams:
    return rng.choice([SamplingParams(), SamplingParams(temperature=0.7, frequency_penalty=0.3),
                       SamplingParams(repetition_penalty=1.3), SamplingParams(presence_penalty=-0.5)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_state_equals_rebuild_after_every_step(seed: int) -> None:
    """Random adds (some resumed with output), finishes, block appends and sampled tokens;
    after each step (condensed) the persistent state equals the lists it was built from."""
    rng = random.Random(seed)
    b, refs, next_id = _batch(), {}, 0
    for _ in range(60):
        for r in [r for r in refs if rng.random() < 0.2]:  # finished / preempted
            b.remove(r)
            del refs[r]
        b.condense()
        while len(refs) < b.max_num_reqs and rng.random() < 0.5:  # new or resumed requests
            ref = _Ref([rng.randrange(VOCAB) for _ in range(rng.randint(1, 10))], _random_params(rng))
            ref.output = [rng.randrange(VOCAB) for _ in range(rng.choice([0, 0, 3]))]
            ref.blocks = [rng.randrange(100) for _ in range(rng.randint(0, 2))]
            refs[f"q{next_id}"] = ref
            b.add(f"q{next_id}", ref.prompt, ref.output, ref.blocks, 0, ref.params)
            next_id += 1
        for r, ref in refs.items():  # the step: new blocks, computed tokens, one sample each
            row = b.row_of[r]
            if len(ref.blocks) < 12 and rng.random() < 0.3:
                new = [rng.randrange(100)]
                ref.blocks += new
                b.append_blocks(row, new)
            ref.computed = len(ref.prompt) + len(ref.output)
            b.num_computed_tokens[row] = ref.computed
        live = [r for r in refs if len(refs[r].prompt) + len(refs[r].output) < 60]
        if live:
            sampled = [rng.randrange(VOCAB) for _ in live]
            b.record_sampled(torch.from_numpy(b.rows_of(live)), torch.tensor(sampled))
            for r, t in zip(live, sampled):
                refs[r].output.append(t)
            if rng.random() < 0.5:  # the runner's vectorised write, or one row at a time
                b.append_sampled(b.rows_of(live), np.array(sampled))
            else:
                for r, t in zip(live, sampled):
                    b.append_tokens(b.row_of[r], [t])
        b.condense()
        _check_equal(b, refs)


def test_penalties_from_device_counts_equal_padded_lists() -> None:
    from pagedlm.sample.metadata import build_sampling_metadata
    from pagedlm.sample.sampler import apply_logits_processors

    params = [SamplingParams(frequency_penalty=0.4, presence_penalty=0.3, repetition_penalty=1.5),
              SamplingParams(), SamplingParams(presence_penalty=-1.0)]
    prompts, outputs = [[1, 2, 2], [3], [4, 5]], [[2, 7, 7], [8], [5, 5, 9]]
    b = _batch()
    for i, (sp, pr, out) in enumerate(zip(params, prompts, outputs)):
        b.add(f"r{i}", pr, out, [], 0, sp)
    logits = torch.randn(3, VOCAB)
    gens = [None] * 3
    lists = build_sampling_metadata(params, prompts, outputs, gens, VOCAB, torch.device("cpu"))
    device = build_sampling_metadata(params, prompts, [[]] * 3, gens, VOCAB, torch.device("cpu"),
                                     b.penalty_tensors(torch.tensor([0, 1, 2])))
    assert device.penalties.output_token_ids is None
    torch.testing.assert_close(apply_logits_processors(logits, device), apply_logits_processors(logits, lists))
