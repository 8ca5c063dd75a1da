"""Top-k logprobs plus the sampled (or prompt) token's logprob and rank, vLLM V1 layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)
class LogprobsTensors:
    token_ids: torch.Tensor  # [N, k+1] int64: column 0 the sampled/target token, then top-k (descending)
    logprobs: torch.Tensor  # [N, k+1] float32, same layout
    ranks: torch.Tensor  # [N] int64, 1-based rank of column 0's token (1 = most likely)
    # [N, k] int64, the ranks of columns 1..k, when a row listed its own token ids (a top-k
    # row's are its positions 1..k); None: every row is top-k, ranked by position.
    top_ranks: torch.Tensor | None = None

    def slice_rows(self, start: int, end: int) -> "LogprobsTensors":
        return LogprobsTensors(self.token_ids[start:end], self.logprobs[start:end], self.ranks[start:end],
                               None if self.top_ranks is None else self.top_ranks[start:end])

    def to_cpu(self) -> "LogprobsTensors":
        return LogprobsTensors(self.token_ids.cpu(), self.logprobs.cpu(), self.ranks.cpu(),
                               None if self.top_ranks is None else self.top_ranks.cpu())

    def to_host_async(self) -> "LogprobsTensors":
        """Copies queued on the current stream into pinned memory; valid once the stream
        has reached this point (the caller records an event)."""
        return LogprobsTensors(pinned_copy(self.token_ids), pinned_copy(self.logprobs), pinned_copy(self.ranks),
                               None if self.top_ranks is None else pinned_copy(self.top_ranks))


@dataclass(slots=True)
class ListedTokenIds:
    """The rows whose request names its own tokens (SamplingParams.logprob_token_ids): their
    columns 1..L hold those tokens instead of the top-k."""

    rows: torch.Tensor  # [R] int64
    token_ids: torch.Tensor  # [R, L] int64; a shorter list is padded with its first id (sliced off later)
    max_top_k: int  # the largest top-k of the other rows (0: none)


def pinned_copy(t: torch.Tensor) -> torch.Tensor:
    """A non-blocking device-to-host copy into page-locked memory (a plain ``.cpu()`` would
    wait for everything queued on the stream, including work launched after this point)."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)


# vLLM's --logprobs-mode values. raw_*: the logits as the model produced them (after a
# structured-output grammar's mask, which is applied before the sampler, as in vLLM);
# processed_*: what the sampler draws from (the Sampler's docstring lists the steps), masked
# tokens at -inf. *_logits report the logits themselves instead of their log_softmax.
LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")


def is_processed_mode(mode: str) -> bool:
    return mode.startswith("processed_")


def mode_values(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """logits [N, V] -> what ``mode`` reports for them ([N, V] float32; never ``logits`` itself,
    so later in-place steps cannot change it)."""
    if mode.endswith("_logits"):
        return logits.to(torch.float32, copy=True)
    return compute_logprobs(logits)


def compute_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Raw logprobs: log_softmax of the logits as the model produced them."""
    return logits.log_softmax(dim=-1, dtype=torch.float32)  # [N, V]


def gather_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor, num_logprobs: int,
                    listed: ListedTokenIds | None = None) -> LogprobsTensors:
    """logprobs [N, V] (already log_softmax-ed, or logits under a *_logits mode: the same
    order), token_ids [N] -> LogprobsTensors with k = num_logprobs. ``listed``: rows that take
    their own token ids (with their true ranks) in place of the top-k.

    The rank counts the tokens whose logprob is >= the target's (vLLM's convention), so a
    target tied with others gets the worst rank of the tie.
    """
    token_ids = token_ids.to(torch.int64).unsqueeze(-1)  # [N, 1]
    token_logprobs = logprobs.gather(-1, token_ids)  # [N, 1]
    ranks = (logprobs >= token_logprobs).sum(dim=-1)  # [N]
    if listed is not None:
        top_ids, top_logprobs, top_ranks = _listed_columns(logprobs, num_logprobs, listed)
        return LogprobsTensors(torch.cat((token_ids, top_ids), dim=1), torch.cat((token_logprobs, top_logprobs), dim=1),
                               ranks.to(torch.int64), top_ranks)
    if num_logprobs > 0:
        top_logprobs, top_ids = torch.topk(logprobs, num_logprobs, dim=-1)  # [N, k]
        token_ids = torch.cat((token_ids, top_ids), dim=1)
        token_logprobs = torch.cat((token_logprobs, top_logprobs), dim=1)
    return LogprobsTensors(token_ids=token_ids, logprobs=token_logprobs.float(), ranks=ranks.to(torch.int64))


def _listed_columns(logprobs: torch.Tensor, k: int, listed: ListedTokenIds
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns 1..k: (ids [N, k], values [N, k], ranks [N, k]); the other rows' top-k (ranked by
    position), the listed rows' tokens (ranked like column 0's token, over their own row only)."""
    num_rows, num_listed = logprobs.shape[0], listed.token_ids.shape[1]
    device = logprobs.device
    ids = torch.zeros(num_rows, k, dtype=torch.int64, device=device)
    values = torch.full((num_rows, k), float("-inf"), dtype=torch.float32, device=device)
    ranks = torch.arange(1, k + 1, dtype=torch.int64, device=device).expand(num_rows, k).clone()
    if listed.max_top_k > 0:
        top_values, top_ids = torch.topk(logprobs, listed.max_top_k, dim=-1)  # [N, top_k]
        ids[:, : listed.max_top_k] = top_ids
        values[:, : listed.max_top_k] = top_values
    row_values = logprobs.index_select(0, listed.rows)  # [R, V]
    chosen = row_values.gather(1, listed.token_ids)  # [R, L]
    ids[listed.rows, :num_listed] = listed.token_ids
    values[listed.rows, :num_listed] = chosen.float()
    ranks[listed.rows, :num_listed] = count_at_least(row_values, chosen)
    return ids, values, ranks


def count_at_least(values: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """values [R, V], targets [R, L] -> [R, L] int64: per target, how many of its row's values
    are >= it. One sort of the rows and a binary search per target (no [R, L, V] tensor)."""
    ascending = values.sort(dim=-1).values  # [R, V]
    below = torch.searchsorted(ascending, targets.to(ascending.dtype).contiguous(), side="left")  # [R, L]: count < target
    return values.shape[1] - below
