"""The sampler: logits -> next token ids (+ logprobs), vLLM V1 semantics.

Order: raw logprobs (before anything touches the logits) -> allowed_token_ids -> bad words
and min_tokens -> logit_bias -> penalties -> greedy rows take the argmax; random rows:
temperature -> min_p -> top-k -> top-p -> exponential-race sampling.

--logprobs-mode (vLLM's): raw_* report the logits as they came in (raw_logprobs, the
default, their log_softmax); processed_* report the logits the tokens were drawn from, as
vLLM V1's sampler does: in a batch of greedy rows only, after the logits processors and
penalties; otherwise after those, the temperature (1 on greedy rows), min_p, top-k and top-p,
the tokens those drop at -inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pagedlm.kernels import ops
from pagedlm.kernels.reference import row_argmax
from pagedlm.sample.custom_logits import CustomLogits
from pagedlm.sample.logprobs import (
    LOGPROBS_MODES,
    LogprobsTensors,
    gather_logprobs,
    is_processed_mode,
    mode_values,
)
from pagedlm.sample.metadata import SamplingMetadata
from pagedlm.sample.penalties import apply_penalties
from pagedlm.sampling_params import SAMPLING_EPS



@dataclass(slots=True)
class SamplerOutput:
    sampled_token_ids: torch.Tensor  # [B] int64
    logprobs: LogprobsTensors | None  # [B, max_num_logprobs + 1] when any row asked, else None


def _needs_processing(md: SamplingMetadata) -> bool:
    return (
        md.allowed_token_ids_mask is not None
        or md.banned_token_indices is not None
        or md.min_tokens_grammar_stops is not None
        or md.logit_bias is not None
        or md.penalties is not None
    )


def apply_logits_processors(logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """The processors that can change the argmax; logits [B, V] float32, not modified.

    -inf is absorbing under every later step (bias adds a finite value, penalties scale or
    subtract finite values), so the order among the masks does not matter.
    """
    if not _needs_processing(md):
        return logits
    logits = logits.clone()  # [B, V]
    if md.allowed_token_ids_mask is not None:
        logits.masked_fill_(md.allowed_token_ids_mask, float("-inf"))
    if md.banned_token_indices is not None:
        logits.index_put_(md.banned_token_indices, torch.tensor(float("-inf"), device=logits.device))
    if md.logit_bias is not None:
        rows, token_ids, bias = md.logit_bias
        logits.index_put_((rows, token_ids), bias, accumulate=True)
    if md.penalties is not None:
        apply_penalties(logits, md.penalties)
    if md.min_tokens_grammar_stops is not None:
        _ban_grammar_stops(logits, *md.min_tokens_grammar_stops)
    return logits


def _ban_grammar_stops(logits: torch.Tensor, rows: torch.Tensor, token_ids: torch.Tensor) -> None:
    """min_tokens' stop-token ban on structured-output rows, except on a row it would leave
    with no token: there the grammar has reached its end and allows only stop tokens, so the
    request stops (vLLM's rule) instead of sampling a token the grammar rejects. In place,
    after every other mask (the grammar's bitmask is applied before the sampler); no sync."""
    kept = logits[rows, token_ids]  # [S]
    logits.index_put_((rows, token_ids), torch.tensor(float("-inf"), device=logits.device))
    emptied = torch.isneginf(logits.index_select(0, rows)).all(dim=-1)  # [S]: its row has no token left
    logits.index_put_((rows, token_ids), torch.where(emptied, kept, torch.full_like(kept, float("-inf"))))


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below min_p * (the row's top probability).

    logits [B, V], min_p [B] (0 = off). In place; returns logits.
    """
    probs = logits.softmax(dim=-1)  # [B, V]
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)  # [B, 1]
    return logits.masked_fill_(probs < threshold, float("-inf"))


def apply_top_k_only(logits: torch.Tensor, top_k: torch.Tensor, max_top_k: int) -> torch.Tensor:
    """Keep the top_k largest logits per row (ties with the k-th kept); no full sort.

    logits [R, V], top_k [R] (vocab_size = off), max_top_k = the largest k in use. In place.
    """
    vocab_size = logits.shape[1]
    no_top_k = top_k >= vocab_size  # [R]
    kth_index = (top_k.clamp(max=max_top_k) - 1).unsqueeze(1)  # [R, 1]
    kth_value = logits.topk(max_top_k, dim=-1).values.gather(1, kth_index)  # [R, 1]
    kth_value.masked_fill_(no_top_k.unsqueeze(1), float("-inf"))
    return logits.masked_fill_(logits < kth_value, float("-inf"))


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None, max_top_k: int
) -> torch.Tensor:
    """Top-k, then top-p: keep the smallest set of tokens whose probability sums to >= top_p
    (the most likely token always stays). logits [R, V], top_k/top_p [R]. Returns [R, V]."""
    if top_p is None:
        return logits if top_k is None else apply_top_k_only(logits, top_k, max_top_k)
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)  # [R, V] ascending
    if top_k is not None:
        kth_index = (sorted_logits.shape[1] - top_k).unsqueeze(1)  # [R, 1]
        kth_value = sorted_logits.gather(1, kth_index)
        sorted_logits.masked_fill_(sorted_logits < kth_value, float("-inf"))
    # cumsum[i] = mass of token i and every less likely token; drop i when the mass of the
    # tokens more likely than i already reaches top_p.
    cumsum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # [R, V]
    drop = cumsum <= 1.0 - top_p.unsqueeze(1)
    drop[:, -1] = False
    sorted_logits.masked_fill_(drop, float("-inf"))
    return sorted_logits.scatter(dim=-1, index=sorted_idx, src=sorted_logits)


def _apply_to_rows(
    logits: torch.Tensor, rows: torch.Tensor | None, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """fn on logits[rows] only (all rows when rows is None), written back in place."""
    if rows is None:
        return fn(logits)
    logits[rows] = fn(logits[rows])
    return logits


def exponential_sample(logits: torch.Tensor, generators: dict[int, torch.Generator]) -> torch.Tensor:
    """A draw from softmax(logits) per row (logits [B, V] float32, may be modified): the
    exponential race argmax(p / q), q ~ Exp(1), i.e. argmax(logits - log q) (``ops.sample_argmax``,
    one pass on CUDA). A seeded row draws its own q from its generator, so its tokens do not
    depend on the rest of the batch or its row position."""
    seeded = {row: row_argmax(logits[row: row + 1] - torch.empty_like(logits[row]).exponential_(generator=g).log_())
              for row, g in generators.items()}
    if len(seeded) == logits.shape[0]:
        return torch.cat([seeded[row] for row in range(logits.shape[0])])
    sampled = ops.sample_argmax(logits, None)
    for row, token in seeded.items():
        sampled[row: row + 1] = token
    return sampled


class Sampler:
    def __init__(self, custom_logits: CustomLogits | None = None, logprobs_mode: str = "raw_logprobs") -> None:
        # vLLM's custom logits processors: those that can change the argmax run after the
        # built-in processing, before greedy rows take the argmax; argmax-invariant ones run
        # on random rows after the temperature (skipped when every row is greedy), as in vLLM.
        self.custom_logits = custom_logits
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {list(LOGPROBS_MODES)}, got {logprobs_mode!r}")
        self.logprobs_mode = logprobs_mode

    def __call__(self, logits: torch.Tensor, metadata: SamplingMetadata) -> SamplerOutput:
        """logits [B, V] -> SamplerOutput; the input logits are left as they are."""
        logits = logits.to(torch.float32)
        wanted = metadata.max_num_logprobs is not None
        processed = wanted and is_processed_mode(self.logprobs_mode)
        values = None
        if wanted and not processed:
            values = mode_values(logits, self.logprobs_mode)  # [B, V]
        logits = apply_logits_processors(logits, metadata)
        if self.custom_logits is not None:
            logits = self.custom_logits.apply(logits, metadata.batch_rows, argmax_invariant=False)
        sampled, processed_values = self._sample(logits, metadata, processed)  # [B]
        if processed_values is not None:
            values = processed_values
        logprobs = None
        if values is not None:
            logprobs = gather_logprobs(values, sampled, metadata.max_num_logprobs, metadata.logprob_token_ids)
        return SamplerOutput(sampled_token_ids=sampled, logprobs=logprobs)

    def sample(self, logits: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
        """Processed logits [B, V] -> token ids [B] int64."""
        return self._sample(logits, md, False)[0]

    def _sample(self, logits: torch.Tensor, md: SamplingMetadata,
                keep_processed: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(token ids [B], and with ``keep_processed`` the processed_* mode's values [B, V] of
        the logits the tokens are drawn from, else None)."""
        greedy = None if md.all_random else row_argmax(logits)  # [B]
        if md.all_greedy:
            return greedy, (mode_values(logits, self.logprobs_mode) if keep_processed else None)
        temperature = md.temperature
        if not md.all_random:  # greedy rows are discarded below; avoid dividing by 0
            temperature = torch.where(temperature < SAMPLING_EPS, 1.0, temperature)
        logits = logits / temperature.unsqueeze(1)  # [B, V], a new tensor from here on
        if self.custom_logits is not None:
            logits = self.custom_logits.apply(logits, md.batch_rows, argmax_invariant=True)
        if md.min_p is not None:
            apply_min_p(logits, md.min_p)
        if md.top_k is not None or md.top_p is not None:
            logits = _apply_to_rows(
                logits, md.filter_rows, lambda x: apply_top_k_top_p(x, md.top_k, md.top_p, md.max_top_k)
            )
        # (a copy: the exponential race may overwrite the logits in place)
        processed = mode_values(logits, self.logprobs_mode) if keep_processed else None
        sampled = exponential_sample(logits, md.generators)
        if greedy is None:
            return sampled, processed
        return torch.where(md.temperature < SAMPLING_EPS, greedy, sampled), processed
