"""Repetition, frequency and presence penalties (vLLM / OpenAI semantics), batched."""

from __future__ import annotations

import torch

from pagedlm.sample.metadata import PenaltyMetadata


def token_bin_counts(token_ids: torch.Tensor, vocab_size: int, dtype: torch.dtype) -> torch.Tensor:
    """token_ids [B, L] padded with vocab_size -> counts [B, V]; the padding bin is dropped."""
    num_rows = token_ids.shape[0]
    counts = torch.zeros(num_rows, vocab_size + 1, dtype=dtype, device=token_ids.device)  # [B, V+1]
    counts.scatter_add_(1, token_ids, torch.ones_like(token_ids, dtype=dtype))
    return counts[:, :vocab_size]


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
    """Tokens seen in prompt or output: positive logits divided by the penalty, others multiplied.

    logits [B, V], seen [B, V] bool, repetition [B]. In place; returns logits.
    """
    penalty = torch.where(seen, repetition.unsqueeze(1), 1.0)  # [B, V]
    scale = torch.where(logits > 0, 1.0 / penalty, penalty)
    return logits.mul_(scale)


def apply_penalties(logits: torch.Tensor, penalties: PenaltyMetadata) -> torch.Tensor:
    """logits [B, V] float32, modified in place and returned.

    Frequency subtracts f * (count in output), presence subtracts p once if the token is in
    the output; repetition looks at prompt and output alike. The prompt never counts for
    frequency/presence (OpenAI semantics).
    """
    vocab_size = logits.shape[1]
    if penalties.output_counts is not None:  # kept on the device by the persistent batch
        output_counts = penalties.output_counts.to(logits.dtype)  # [B, V]
    else:
        output_counts = token_bin_counts(penalties.output_token_ids, vocab_size, logits.dtype)  # [B, V]
    output_mask = output_counts > 0
    prompt_mask = penalties.prompt_mask
    if prompt_mask is None and penalties.prompt_token_ids is not None:
        prompt_mask = token_bin_counts(penalties.prompt_token_ids, vocab_size, logits.dtype) > 0
    if prompt_mask is not None:
        apply_repetition_penalty(logits, prompt_mask | output_mask, penalties.repetition)
    logits.sub_(penalties.frequency.unsqueeze(1) * output_counts)
    logits.sub_(penalties.presence.unsqueeze(1) * output_mask.to(logits.dtype))
    return logits
