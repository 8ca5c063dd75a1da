"""Device step preparation (the PyTorch reference) against the host-built step inputs."""

from __future__ import annotations

import random

import numpy as np
import torch

from pagedlm.kernels.step_prep import prepare_step
from pagedlm.sampling_params import SamplingParams
from pagedlm.worker.input_batch import CachedRequestState, build_step_inputs
from pagedlm.worker.persistent_batch import PersistentBatch

BLOCK = 4


def random_step(rng: random.Random, num_reqs: int, width: int = 12):
    """A persistent batch with rows in shuffled order and a mixed step (decodes, prefill
    chunks, a prefix hit) over it; -> (batch, states, num_scheduled)."""
    batch = PersistentBatch(16, 64, width, 100, torch.device("cpu"))
    states, num_scheduled = {}, {}
    for i in rng.sample(range(num_reqs), num_reqs):
        prompt = [rng.randrange(100) for _ in range(rng.randint(1, 40))]
        computed = rng.randrange(len(prompt)) if rng.random() < 0.5 else len(prompt) - 1
        n = 1 if computed == len(prompt) - 1 else rng.randint(1, len(prompt) - computed)
        blocks = rng.sample(range(200), -(-(computed + n) // BLOCK))
        state = CachedRequestState(f"r{i}", prompt, [], SamplingParams(), None, blocks, computed, list(prompt))
        states[state.req_id] = state
        batch.add(state.req_id, prompt, [], blocks, computed, state.sampling_params)
        num_scheduled[state.req_id] = n
    return batch, states, dict(sorted(num_scheduled.items()))


def run_reference(batch: PersistentBatch, inputs, num_padded_seqs: int):
    b = len(inputs.seq_lens)
    rows = torch.from_numpy(batch.rows_of(inputs.req_ids))
    computed = torch.from_numpy((inputs.seq_lens - np.diff(inputs.query_start_loc)).astype(np.int64))
    qsl = torch.from_numpy(inputs.query_start_loc.astype(np.int64))
    pad = num_padded_seqs - b  # graph padding: one token each, on row 0
    rows = torch.cat([rows, torch.zeros(pad, dtype=torch.int64)])
    computed = torch.cat([computed, torch.zeros(pad, dtype=torch.int64)])
    qsl = torch.cat([qsl, qsl[-1] + 1 + torch.arange(pad)])
    num_tokens = int(qsl[-1])
    out = (torch.empty(num_tokens, dtype=torch.int64), torch.empty(num_tokens, dtype=torch.int64),
           torch.empty(num_padded_seqs, dtype=torch.int64),
           torch.empty(num_padded_seqs, batch.block_table.shape[1], dtype=torch.int64))
    prepare_step(torch.from_numpy(batch.block_table), rows, computed, qsl, b, BLOCK, *out)
    return out


def test_reference_matches_host_built_inputs() -> None:
    rng = random.Random(0)
    for trial in range(20):
        batch, states, sched = random_step(rng, rng.randint(1, 10))
        inputs = build_step_inputs(states, sched, BLOCK)
        pad = rng.choice([0, 0, 3])
        positions, slots, seq_lens, tables = run_reference(batch, inputs, len(inputs.seq_lens) + pad)
        t, b = len(inputs.positions), len(inputs.seq_lens)
        np.testing.assert_array_equal(positions[:t].numpy(), inputs.positions)
        np.testing.assert_array_equal(slots[:t].numpy(), inputs.slot_mapping)
        np.testing.assert_array_equal(seq_lens[:b].numpy(), inputs.seq_lens)
        width = inputs.block_tables.shape[1]
        np.testing.assert_array_equal(tables[:b, :width].numpy(), inputs.block_tables)
        assert (slots[t:] == -1).all() and (seq_lens[b:] == 1).all() and (positions[t:] == 0).all()
