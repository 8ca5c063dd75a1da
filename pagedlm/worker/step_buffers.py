"""Persistent step-input buffers: every integer input of a step is packed into one pinned
host buffer and reaches the device in one copy. The device views sit at fixed addresses,
so CUDA graphs captured on them replay with the next step's values."""

from __future__ import annotations

import numpy as np
import torch

from pagedlm.attention.metadata import AttentionMetadata
from pagedlm.kernels import ops
from pagedlm.worker.input_batch import StepInputs


def padding_query_starts(num_actual_tokens: int, num_padded_seqs: int, num_tokens: int,
                         pad_query_len: int) -> np.ndarray:
    """query_start_loc[b + 1] of the padded sequences b of a CUDA-graph step: they split the
    padded tokens [num_actual_tokens, num_tokens) ``pad_query_len`` each, so every token
    belongs to a sequence (the attention kernel writes every row) and no padded sequence is
    longer than the graph's query length (its context stays inside a block-table row);
    sequences past the last padded token are empty. The caller sizes the step so that the
    padded sequences cover every padded token."""
    ends = num_actual_tokens + pad_query_len * np.arange(1, num_padded_seqs + 1)
    if (ends[-1] if num_padded_seqs else num_actual_tokens) < num_tokens:
        raise ValueError(f"{num_padded_seqs} padded sequences of {pad_query_len} tokens cannot cover "
                         f"{num_tokens - num_actual_tokens} padded tokens")
    return np.minimum(ends, num_tokens)


class StepBuffers:
    def __init__(self, max_tokens: int, max_seqs: int, max_blocks_per_seq: int, device: torch.device) -> None:
        self.max_tokens, self.max_seqs, self.width = max_tokens, max_seqs, max_blocks_per_seq
        self.device = device
        sizes = {"input_ids": max_tokens, "positions": max_tokens, "slot_mapping": max_tokens,
                 "logits_indices": max_seqs, "pending_dst": max_seqs, "pending_src": max_seqs,
                 "query_start_loc": max_seqs + 1, "seq_lens": max_seqs,
                 "rows": max_seqs, "num_computed": max_seqs,  # device step preparation's inputs
                 "block_tables": max_seqs * max_blocks_per_seq}
        self.offsets: dict[str, int] = {}
        total = 0
        for name, size in sizes.items():  # block_tables last: only its used rows are copied
            self.offsets[name] = total
            total += size
        on_cuda = device.type == "cuda"
        self.host = torch.zeros(total, dtype=torch.int64, pin_memory=on_cuda)
        self.dev = torch.zeros(total, dtype=torch.int64, device=device) if on_cuda else self.host
        self.host_np = self.host.numpy()

    def _view(self, buf: torch.Tensor, name: str, n: int) -> torch.Tensor:
        start = self.offsets[name]
        return buf[start : start + n]

    def stage(self, inputs: StepInputs, num_tokens: int, num_seqs: int, pad_query_len: int = 1) -> None:
        """Write a step into the host buffer, padded to (num_tokens, num_seqs): padded tokens
        write no KV (slot -1); the padded sequences take the padded tokens, ``pad_query_len``
        each (their context is just those tokens), and any left over take none."""
        h, o = self.host_np, self.offsets
        n_tok, n_seq = len(inputs.input_ids), len(inputs.seq_lens)
        h[o["input_ids"] : o["input_ids"] + n_tok] = inputs.input_ids
        h[o["positions"] : o["positions"] + n_tok] = inputs.positions
        h[o["slot_mapping"] : o["slot_mapping"] + n_tok] = inputs.slot_mapping
        h[o["input_ids"] + n_tok : o["input_ids"] + num_tokens] = 0
        h[o["positions"] + n_tok : o["positions"] + num_tokens] = 0
        h[o["slot_mapping"] + n_tok : o["slot_mapping"] + num_tokens] = -1
        h[o["logits_indices"] : o["logits_indices"] + len(inputs.logits_indices)] = inputs.logits_indices
        h[o["pending_dst"] : o["pending_dst"] + len(inputs.pending_token_indices)] = inputs.pending_token_indices
        qsl = o["query_start_loc"]
        h[qsl : qsl + n_seq + 1] = inputs.query_start_loc
        h[qsl + n_seq + 1 : qsl + num_seqs + 1] = padding_query_starts(n_tok, num_seqs - n_seq, num_tokens,
                                                                       pad_query_len)
        h[o["seq_lens"] : o["seq_lens"] + n_seq] = inputs.seq_lens
        h[o["seq_lens"] + n_seq : o["seq_lens"] + num_seqs] = np.diff(h[qsl + n_seq : qsl + num_seqs + 1])
        tables = h[o["block_tables"] : o["block_tables"] + num_seqs * self.width].reshape(num_seqs, self.width)
        tables[:n_seq, : inputs.block_tables.shape[1]] = inputs.block_tables
        tables[n_seq:] = 0

    def upload(self, num_seqs: int, with_tables: bool = True) -> None:
        """The step's one host-to-device copy (nothing to do on CPU); without the block
        tables when the device prepares them."""
        if self.dev is not self.host:
            end = self.offsets["block_tables"] + (num_seqs * self.width if with_tables else 0)
            self.dev[:end].copy_(self.host[:end], non_blocking=True)

    def stage_rows(self, inputs: StepInputs, rows: np.ndarray, num_tokens: int, num_seqs: int,
                   pad_query_len: int = 1) -> None:
        """The host half of device step preparation: input ids, query starts, and each
        sequence's persistent row and computed count, padded like stage(); prepare() then
        derives positions, slots, seq lens and block tables on the device."""
        h, o = self.host_np, self.offsets
        n_tok, n_seq = len(inputs.input_ids), len(inputs.seq_lens)
        h[o["input_ids"] : o["input_ids"] + n_tok] = inputs.input_ids
        h[o["input_ids"] + n_tok : o["input_ids"] + num_tokens] = 0
        h[o["logits_indices"] : o["logits_indices"] + len(inputs.logits_indices)] = inputs.logits_indices
        h[o["pending_dst"] : o["pending_dst"] + len(inputs.pending_token_indices)] = inputs.pending_token_indices
        qsl = o["query_start_loc"]
        h[qsl : qsl + n_seq + 1] = inputs.query_start_loc
        h[qsl + n_seq + 1 : qsl + num_seqs + 1] = padding_query_starts(n_tok, num_seqs - n_seq, num_tokens,
                                                                       pad_query_len)
        h[o["rows"] : o["rows"] + n_seq] = rows
        h[o["rows"] + n_seq : o["rows"] + num_seqs] = 0  # padding reads row 0 and writes nothing
        h[o["num_computed"] : o["num_computed"] + n_seq] = inputs.num_computed
        h[o["num_computed"] + n_seq : o["num_computed"] + num_seqs] = 0

    def prepare(self, block_table: torch.Tensor, num_tokens: int, num_seqs: int, num_actual_seqs: int,
                block_size: int) -> None:
        """On the device, after upload(): positions, slots, seq lens, block tables."""
        d = self.dev
        ops.prepare_step(block_table, self._view(d, "rows", num_seqs), self._view(d, "num_computed", num_seqs),
                         self._view(d, "query_start_loc", num_seqs + 1), num_actual_seqs, block_size,
                         self._view(d, "positions", num_tokens), self._view(d, "slot_mapping", num_tokens),
                         self._view(d, "seq_lens", num_seqs),
                         self._view(d, "block_tables", num_seqs * self.width).view(num_seqs, self.width))

    def device_inputs(self, num_tokens: int, num_seqs: int, max_query_len: int, max_seq_len: int,
                      num_actual_tokens: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        d = self.dev
        meta = AttentionMetadata(
            slot_mapping=self._view(d, "slot_mapping", num_tokens),
            query_start_loc=self._view(d, "query_start_loc", num_seqs + 1),
            seq_lens=self._view(d, "seq_lens", num_seqs),
            block_tables=self._view(d, "block_tables", num_seqs * self.width).view(num_seqs, self.width),
            max_query_len=max_query_len, max_seq_len=max_seq_len, num_actual_tokens=num_actual_tokens,
        )
        return self._view(d, "input_ids", num_tokens), self._view(d, "positions", num_tokens), meta

    def stage_pending_sources(self, rows: list[int]) -> None:
        """Rows of the previous step's sampled ids that fill this step's pending tokens."""
        start = self.offsets["pending_src"]
        self.host_np[start : start + len(rows)] = rows

    def fill_pending(self, num_pending: int, prev_sampled: torch.Tensor) -> None:
        """On the device, after the upload: input_ids[dst] = prev_sampled[src]. No host sync."""
        if num_pending:
            dst = self._view(self.dev, "pending_dst", num_pending)
            src = self._view(self.dev, "pending_src", num_pending)
            self._view(self.dev, "input_ids", self.max_tokens).index_copy_(0, dst, prev_sampled.index_select(0, src))

    def logits_indices(self, n: int) -> torch.Tensor:
        """Device view of the step's sampling token indices (uploaded with everything else)."""
        return self._view(self.dev, "logits_indices", n)
