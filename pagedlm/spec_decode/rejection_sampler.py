"""Exact verification of draft tokens (speculative sampling, Leviathan et al. / Chen et al.).

One target forward scores every draft position: for a request with k drafts x_1..x_k the
target gives k + 1 rows of logits (after its last accepted token and after each draft).
Each row is processed exactly like the plain sampler's (logits processors, penalties over
the output so far *including the earlier drafts*, temperature, min-p, top-k, top-p), so row j
is the target's distribution p_j given that x_1..x_j were accepted.

- Greedy rows: x_{j+1} is accepted while it equals argmax p_j; the first mismatch emits the
  argmax instead; if all match, the bonus row's argmax follows. Output = the target's own
  greedy tokens.
- Random rows: x_{j+1} is accepted with probability min(1, p_j(x) / q_j(x)); on rejection a
  token is drawn from norm(max(p_j - q_j, 0)) and the request stops there; if all are
  accepted a bonus token is drawn from p_k. Every emitted token is then distributed exactly
  as p. An n-gram draft has no distribution: q is the point mass on x (accept w.p. p(x),
  resample from p without x).

Seeded requests draw every random number from their own generator, row by row, so their
output does not depend on the rest of the batch. Everything stays on the device; the host
reads (tokens, accepted) in the step's one device-to-host copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pagedlm.sample.logprobs import LogprobsTensors, gather_logprobs, is_processed_mode, mode_values
from pagedlm.sample.metadata import SamplingMetadata
from pagedlm.sample.sampler import _apply_to_rows, apply_logits_processors, apply_min_p, apply_top_k_top_p
from pagedlm.sampling_params import SAMPLING_EPS



@dataclass(slots=True)
class RejectionOutput:
    tokens: torch.Tensor  # [N] int64: per row, the draft if accepted, else the token emitted there
    accepted: torch.Tensor  # [N] bool: the row's draft was accepted (always False on bonus rows)
    logprobs: LogprobsTensors | None  # [N, k+1] the target's logprobs of tokens (--logprobs-mode), when asked


def target_logits(processed: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """The logits the plain sampler draws from: processed logits [N, V] -> [N, V], a new
    tensor (temperature, min-p, top-k, top-p; greedy rows come out at temperature 1, unused)."""
    temperature = torch.where(md.temperature < SAMPLING_EPS, 1.0, md.temperature)
    logits = processed / temperature.unsqueeze(1)  # [N, V], a new tensor
    if md.min_p is not None:
        apply_min_p(logits, md.min_p)
    if md.top_k is not None or md.top_p is not None:
        logits = _apply_to_rows(logits, md.filter_rows, lambda x: apply_top_k_top_p(x, md.top_k, md.top_p, md.max_top_k))
    return logits


def target_probs(processed: torch.Tensor, md: SamplingMetadata) -> torch.Tensor:
    """The distribution the plain sampler draws from: processed logits [N, V] -> probs [N, V]."""
    return target_logits(processed, md).softmax(dim=-1)


def _random_draws(num_rows: int, vocab_size: int, generators: dict[int, torch.Generator],
                  seeded_draft_rows: set[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """u ~ U[0, 1) [N] and E ~ Exp(1) [N, V]. A seeded row draws from its generator: its u
    (draft rows only) then its E. A bonus row thus draws what the plain sampler draws for the
    request (its E alone), so a seeded request's tokens do not depend on whether another
    request of the step has drafts (which picks this sampler over the plain one)."""
    u = torch.rand(num_rows, device=device)
    e = torch.empty(num_rows, vocab_size, device=device)
    if len(generators) != num_rows:
        torch.rand(e.shape, out=e).log_().neg_()  # -log(U) is Exp(1)
    for row in sorted(generators):
        gen = generators[row]
        if row in seeded_draft_rows:
            u[row] = torch.rand(1, generator=gen, device=device)[0]
        e[row].exponential_(generator=gen)
    return u, e


def rejection_sample(
    logits: torch.Tensor,
    draft_token_ids: torch.Tensor,
    is_draft_row: torch.Tensor,
    md: SamplingMetadata,
    draft_probs: torch.Tensor | None = None,
    draft_rows: list[int] | None = None,
    logprobs_mode: str = "raw_logprobs",
) -> RejectionOutput:
    """logits [N, V] (the target's, raw); draft_token_ids [N] int64 (any value on bonus rows);
    is_draft_row [N] bool; md: one row per logits row; draft_probs [N, V] or None (point
    masses: n-gram drafts). Rows of one request are consecutive, drafts first, bonus last.
    draft_rows: the indices of the draft rows, known on the host (read from is_draft_row,
    a device sync, when not given). logprobs_mode: what the logprobs report, as in the plain
    Sampler (a processed_* mode: the values of the logits each row's token is drawn from)."""
    logits = logits.to(torch.float32)
    wanted = md.max_num_logprobs is not None
    keep_processed = wanted and is_processed_mode(logprobs_mode)
    raw_logprobs = None
    if wanted and not keep_processed:
        raw_logprobs = mode_values(logits, logprobs_mode)
    processed = apply_logits_processors(logits, md)
    greedy_tokens = processed.argmax(dim=-1)  # [N]
    drafts = draft_token_ids.clamp(min=0).unsqueeze(1)  # [N, 1]
    if md.all_greedy:
        accepted = (greedy_tokens == drafts.squeeze(1)) & is_draft_row
        tokens = torch.where(accepted, drafts.squeeze(1), greedy_tokens)
        if keep_processed:
            raw_logprobs = mode_values(processed, logprobs_mode)
    else:
        final = target_logits(processed, md)  # [N, V]
        if keep_processed:
            raw_logprobs = mode_values(final, logprobs_mode)
        probs = final.softmax(dim=-1)  # [N, V]
        seeded_draft_rows: set[int] = set()
        if md.generators:
            if draft_rows is None:
                draft_rows = is_draft_row.nonzero().flatten().tolist()
            seeded_draft_rows = set(md.generators).intersection(draft_rows)
        u, exp = _random_draws(probs.shape[0], probs.shape[1], md.generators, seeded_draft_rows, probs.device)
        p_draft = probs.gather(1, drafts).squeeze(1)  # [N]
        if draft_probs is None:
            q_draft = torch.ones_like(p_draft)
            residual = probs.scatter(1, drafts, 0.0)
        else:
            q_draft = draft_probs.gather(1, drafts).squeeze(1)
            residual = (probs - draft_probs).clamp_(min=0.0)
        # Bonus rows draw from p itself.
        residual = torch.where(is_draft_row.unsqueeze(1), residual, probs)
        recovered = residual.div_(exp).argmax(dim=-1)  # [N], a draw from norm(residual)
        greedy_row = md.temperature < SAMPLING_EPS
        accept_random = u * q_draft < p_draft  # u < p / q, without dividing by q
        accepted = torch.where(greedy_row, greedy_tokens == drafts.squeeze(1), accept_random) & is_draft_row
        tokens = torch.where(accepted, drafts.squeeze(1), torch.where(greedy_row, greedy_tokens, recovered))
    logprobs = None
    if raw_logprobs is not None:
        logprobs = gather_logprobs(raw_logprobs, tokens, md.max_num_logprobs, md.logprob_token_ids)
    return RejectionOutput(tokens=tokens, accepted=accepted, logprobs=logprobs)


def emitted_counts(accepted: list[bool], num_drafts: list[int]) -> list[int]:
    """Host side, after the copy: tokens each request emits (accepted drafts + 1), rows in
    request order with num_drafts[b] + 1 rows per request."""
    counts, row = [], 0
    for k in num_drafts:
        n = 0
        while n < k and accepted[row + n]:
            n += 1
        counts.append(n + 1)
        row += k + 1
    return counts
