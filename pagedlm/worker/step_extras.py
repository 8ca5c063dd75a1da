"""The per-request model inputs beside token ids that some steps carry: token types (BERT
cross-encoders' text pairs) and prompts given as embeddings (rows written over the embedding
lookup). Each returns None / nothing for a step without them, so most steps do no work here."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pagedlm.worker.input_batch import CachedRequestState, StepInputs


def token_type_ids(model: nn.Module, requests: dict[str, CachedRequestState], inputs: StepInputs,
                   device: torch.device) -> torch.Tensor | None:
    """[T] token types of the step, for models that take them (BERT cross-encoders), when a
    request is a text pair: its second segment is type 1. Pooling prompts run whole in one
    step (the engine config guarantees it), so a request's rows are its prompt from position
    0 and its second segment starts ``compressed_token_type_ids`` rows in."""
    if not getattr(model, "accepts_token_type_ids", False):
        return None
    types = None
    for i, req_id in enumerate(inputs.req_ids):
        params = requests[req_id].pooling_params
        boundary = (params.extra_kwargs or {}).get("compressed_token_type_ids") if params is not None else None
        if boundary is None:
            continue
        if types is None:
            types = np.zeros(int(inputs.query_start_loc[-1]), dtype=np.int64)
        types[int(inputs.query_start_loc[i]) + boundary : int(inputs.query_start_loc[i + 1])] = 1
    return None if types is None else torch.from_numpy(types).to(device)


def take_embeds_spans(requests: dict[str, CachedRequestState], pending: set[str],
                      inputs: StepInputs) -> list[tuple[int, torch.Tensor]]:
    """(first token index in the step, rows) for each request whose scheduled tokens include
    positions of a prompt given as embeddings: those rows replace the embedding lookup. A
    request's rows are let go (and it leaves ``pending``) once its step reaches their end (a
    preempted request gets them again with its recompute), so decode steps do no work here."""
    spans = []
    if not pending:
        return spans
    for i, req_id in enumerate(inputs.req_ids):
        if req_id not in pending:
            continue
        state = requests[req_id]
        lo, hi = int(inputs.query_start_loc[i]), int(inputs.query_start_loc[i + 1])
        start = int(inputs.num_computed[i])
        end = min(start + hi - lo, state.prompt_embeds.shape[0])
        if start < end:
            spans.append((lo, state.prompt_embeds[start:end]))
        if end >= state.prompt_embeds.shape[0]:
            state.prompt_embeds = None
            pending.discard(req_id)
    return spans


def inputs_embeds(model: nn.Module, input_ids: torch.Tensor, spans: list[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """[T, hidden]: the embedding table's rows for the step's tokens, with the prompt rows
    given as embeddings written over their (placeholder) positions."""
    embeds = model.embed_input_ids(input_ids)  # a fresh tensor: written in place
    for first, rows in spans:
        embeds[first:first + rows.shape[0]] = rows.to(embeds.dtype)
    return embeds
