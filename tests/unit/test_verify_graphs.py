"""The verify CUDA graphs' shapes and padded staging, on CPU (no graph is captured): which
steps take a graph and under which padded shape, and that the padded step buffers (host
staging and the device step preparation's PyTorch reference) keep every real token's
position, slot and context while padding tokens write no KV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagedlm.kernels.step_prep import prepare_step
from pagedlm.sampling_params import SamplingParams
from pagedlm.spec_decode.verify_graphs import VerifyGraphRunner, verify_sizes
from pagedlm.worker.cuda_graphs import CUDAGraphRunner, GraphShape, capture_sizes
from pagedlm.worker.input_batch import CachedRequestState, build_step_inputs
from pagedlm.worker.persistent_batch import PersistentBatch
from pagedlm.worker.step_buffers import StepBuffers, padding_query_starts

BS, WIDTH, K = 4, 8, 3  # block size, blocks per sequence, drafts per request
CPU = torch.device("cpu")


def test_padding_sequences_cover_every_padded_token():
    np.testing.assert_array_equal(padding_query_starts(5, 4, 12, 4), [9, 12, 12, 12])  # last two empty
    np.testing.assert_array_equal(padding_query_starts(3, 3, 6, 1), [4, 5, 6])  # decode graphs: one each
    assert len(padding_query_starts(8, 0, 8, 4)) == 0
    with pytest.raises(ValueError, match="cannot cover"):
        padding_query_starts(2, 1, 8, 4)


def test_verify_sizes_follow_the_decode_ladder_within_buffers_and_pause():
    assert verify_sizes(capture_sizes(64), 4, 128, 8192, None) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert verify_sizes(capture_sizes(64), 4, 64, 8192, None)[-1] == 32  # 2 sequence slots per request
    assert verify_sizes(capture_sizes(64), 4, 128, 100, None)[-1] == 24  # 24 x 4 tokens <= 100
    # disable_by_batch_size=25: at most 24 requests verify, padded up to the size 24 graph
    assert verify_sizes(capture_sizes(64), 5, 128, 8192, 25) == [1, 2, 4, 8, 16, 24]
    assert verify_sizes(capture_sizes(64), 5, 128, 8192, 26)[-1] == 32
    assert verify_sizes(capture_sizes(64), 5, 128, 8192, 1000)[-1] == 64


def test_decode_and_verify_graphs_split_the_steps():
    buffers = StepBuffers(64, 16, WIDTH, CPU)
    verify = VerifyGraphRunner(torch.nn.Identity(), buffers, [1, 2, 4, 8], K + 1, WIDTH * BS)
    decode = CUDAGraphRunner(torch.nn.Identity(), buffers, capture_sizes(8), WIDTH * BS)
    assert verify.shape_for(3, 1) is None and decode.shape_for(3, 1) == GraphShape(4, 4, 4, 1)
    assert verify.shape_for(3, 2) == verify.shape_for(3, K + 1) == GraphShape(4, 16, 8, K + 1)
    assert decode.shape_for(3, 2) is None
    assert verify.shape_for(3, K + 2) is None  # a longer prefill chunk runs eagerly
    assert verify.shape_for(9, 2) is None and verify.shape_for(1, 2).size == 1


def verify_step(num_drafts: list[int]) -> tuple[PersistentBatch, dict, dict]:
    """Decoding requests with the given draft counts (tokens past their computed ones), in
    a persistent batch whose rows are not in request order."""
    batch = PersistentBatch(8, WIDTH * BS, WIDTH, 100, CPU)
    states, scheduled = {}, {}
    rng = np.random.default_rng(0)
    for i, k in reversed(list(enumerate(num_drafts))):
        computed = int(rng.integers(1, 20))
        tokens = rng.integers(0, 100, computed + 1 + k).tolist()
        blocks = rng.choice(50, -(-(computed + 1 + k) // BS), replace=False).tolist()
        state = CachedRequestState(f"r{i}", tokens, [], SamplingParams(), None, blocks, computed, list(tokens))
        states[state.req_id] = state
        batch.add(state.req_id, tokens, [], blocks, computed, state.sampling_params)
    for i, k in enumerate(num_drafts):
        scheduled[f"r{i}"] = 1 + k
    return batch, states, scheduled


@pytest.mark.parametrize("device_prep", [True, False])
@pytest.mark.parametrize("num_drafts", [[K, 0, 1], [0, 0, 0, 1], [K, K, K, K], [2, K], [1]])
def test_padded_verify_staging_keeps_real_tokens_and_writes_no_padding_kv(num_drafts, device_prep):
    batch, states, scheduled = verify_step(num_drafts)
    inputs = build_step_inputs(states, scheduled, BS, batch.block_tables(batch.rows_of(list(scheduled))))
    verify = VerifyGraphRunner(torch.nn.Identity(), StepBuffers(64, 16, WIDTH, CPU), [1, 2, 4, 8], K + 1, WIDTH * BS)
    shape = verify.shape_for(len(num_drafts), max(num_drafts) + 1)
    buffers, n_tok, n_seq = verify.buffers, len(inputs.input_ids), len(num_drafts)
    if device_prep:
        buffers.stage_rows(inputs, batch.rows_of(inputs.req_ids), shape.num_tokens, shape.num_seqs, shape.pad_query_len)
        buffers.upload(shape.num_seqs, with_tables=False)
        buffers.prepare(torch.from_numpy(batch.block_table), shape.num_tokens, shape.num_seqs, n_seq, BS)
    else:
        buffers.stage(inputs, shape.num_tokens, shape.num_seqs, shape.pad_query_len)
    input_ids, positions, meta = verify._metadata(shape)
    qsl, seq_lens = meta.query_start_loc.numpy(), meta.seq_lens.numpy()
    assert qsl[-1] == shape.num_tokens and (np.diff(qsl) >= 0).all()  # every token in some sequence
    assert np.diff(qsl).max() <= K + 1 and meta.max_query_len == K + 1
    np.testing.assert_array_equal(qsl[: n_seq + 1], inputs.query_start_loc)
    np.testing.assert_array_equal(seq_lens[:n_seq], inputs.seq_lens)
    np.testing.assert_array_equal(seq_lens[n_seq:], np.diff(qsl)[n_seq:])  # padding: its own tokens only
    np.testing.assert_array_equal(input_ids[:n_tok].numpy(), inputs.input_ids)
    np.testing.assert_array_equal(positions[:n_tok].numpy(), inputs.positions)
    np.testing.assert_array_equal(meta.slot_mapping[:n_tok].numpy(), inputs.slot_mapping)
    assert (meta.slot_mapping[n_tok:] == -1).all() and (input_ids[n_tok:] == 0).all()
    np.testing.assert_array_equal(meta.block_tables[:n_seq, : inputs.block_tables.shape[1]].numpy(),
                                  inputs.block_tables)


def test_step_prep_reference_marks_every_padding_sequence():
    """prepare_step over a verify shape: only the real sequences' tokens get slots."""
    table = torch.arange(2 * WIDTH).view(2, WIDTH)
    rows, computed = torch.tensor([1, 0, 0, 0]), torch.tensor([5, 0, 0, 0])
    qsl = torch.tensor([0, 3, 7, 8, 8])  # one real sequence of 3 tokens, padding of 4 and 1, one empty
    out = torch.empty(8, dtype=torch.int64), torch.empty(8, dtype=torch.int64), torch.empty(4, dtype=torch.int64), \
        torch.empty(4, WIDTH, dtype=torch.int64)
    prepare_step(table, rows, computed, qsl, 1, BS, *out)
    positions, slots, seq_lens, _ = out
    assert positions.tolist() == [5, 6, 7, 0, 1, 2, 3, 0]
    block = WIDTH + 1  # row 1's second block holds positions 4..7
    assert slots.tolist() == [block * BS + 1, block * BS + 2, block * BS + 3, -1, -1, -1, -1, -1]
    assert seq_lens.tolist() == [8, 4, 1, 0]
