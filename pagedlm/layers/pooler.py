"""Pooler: the hidden states of a computed prompt -> its embedding, or (models with a head)
its class probabilities / cross-encoder score / per-token rewards through the model's head.

A head reads the rows its pooling type names: the first token (CLS, encoders' classifiers),
the last token (LAST, decoders' classifiers), the mean of the tokens (MEAN, ModernBERT
classifiers that say so) or every token (ALL, reward models); the model's
``classify`` maps those rows' hidden states to logits and the pooler applies the activation.

Pooling requests run their whole prompt in one step (no chunked prefill, no prefix-cache
hits: the engine config guarantees both), so each request's rows of the step's hidden states
are exactly its prompt's hidden states.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pagedlm.pooling_config import PoolerConfig
from pagedlm.pooling_params import PoolingParams


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    # vLLM's PoolerClassify: one label is a logit (sigmoid), several a distribution (softmax)
    "classify": lambda x: torch.sigmoid(x) if x.shape[-1] < 2 else torch.softmax(x, dim=-1),
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


class Pooler:
    def __init__(self, config: PoolerConfig,
                 classifier: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """classifier: the model's head, [N, hidden] hidden states of the rows the pooling type
        reads -> [N, num_labels] logits (required when the model has a head: classifiers,
        cross-encoders and reward models)."""
        if config.has_head and classifier is None:
            raise ValueError("a classification pooler needs the model's classifier head")
        self.config = config
        self.classifier = classifier

    def __call__(
        self,
        hidden_states: torch.Tensor,  # [T, H] the step's hidden states
        query_start_loc: np.ndarray,  # [B + 1] token offsets of the step's requests
        rows: Sequence[int],  # which of the step's requests to pool
        params: Sequence[PoolingParams],  # one per row
    ) -> list[list[float] | list[list[float]]]:
        starts = torch.as_tensor(np.asarray(query_start_loc)[list(rows)], dtype=torch.long)
        ends = torch.as_tensor(np.asarray(query_start_loc)[[r + 1 for r in rows]], dtype=torch.long)
        if self.config.has_head:
            return self._classify(hidden_states, starts.to(hidden_states.device), ends.to(hidden_states.device),
                                  params)
        pooled = self._pool(hidden_states, starts.to(hidden_states.device), ends.to(hidden_states.device)).cpu()
        results: list[list[float] | list[list[float]]] = []
        for i, p in enumerate(params):
            if p.task == "token_embed":
                vectors = hidden_states[int(starts[i]) : int(ends[i])].float().cpu()
            else:
                vectors = pooled[i]
            results.append(self._finish(vectors, p).tolist())
        return results

    def _classify(self, hidden: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                  params: Sequence[PoolingParams]) -> list[list[float]] | list[list[list[float]]]:
        """The head on each prompt's pooled row (first or last token), or on every token (ALL:
        one row of logits per token), in float32 from the head; then the activation, unless
        the request asks for the raw logits (use_activation=False)."""
        if self.config.pooling_type == "ALL":
            offset = int(starts.min())
            per_token = self.classifier(hidden[offset : int(ends.max())]).float().cpu()  # [N, num_labels]
            logits = [per_token[int(a) - offset : int(b) - offset] for a, b in zip(starts, ends)]
        elif self.config.pooling_type == "MEAN":  # (ModernBERT classifiers with classifier_pooling "mean")
            pooled = self._pool(hidden, starts, ends).to(hidden.dtype)
            logits = list(self.classifier(pooled).float().cpu())
        else:
            rows = starts if self.config.pooling_type == "CLS" else ends - 1
            logits = list(self.classifier(hidden.index_select(0, rows)).float().cpu())  # B x [num_labels]
        results = []
        for row, p in zip(logits, params):
            name = self.config.score_activation if p.task == "score" else self.config.classify_activation
            use = p.use_activation is None or p.use_activation
            results.append((_ACTIVATIONS[name](row) if use else row).tolist())
        return results

    def _pool(self, hidden: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        # -> [B, H] float32 (mean in float32: bf16 sums over long prompts lose digits)
        kind = self.config.pooling_type
        if kind == "CLS":
            return hidden.index_select(0, starts).float()
        if kind == "LAST":
            return hidden.index_select(0, ends - 1).float()
        lengths = ends - starts
        segment = torch.repeat_interleave(torch.arange(len(starts), device=hidden.device), lengths)
        token_idx = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
        token_idx = token_idx + torch.arange(len(token_idx), device=hidden.device)
        sums = torch.zeros(len(starts), hidden.shape[1], dtype=torch.float32, device=hidden.device)
        sums.index_add_(0, segment, hidden.index_select(0, token_idx).float())
        return sums / lengths.unsqueeze(1).float()

    def _finish(self, vectors: torch.Tensor, params: PoolingParams) -> torch.Tensor:
        """Matryoshka truncation, then L2 normalisation (so a truncated vector is unit length)."""
        if params.dimensions is not None:
            vectors = vectors[..., : params.dimensions]
        normalize = self.config.normalize if params.normalize is None else params.normalize
        return F.normalize(vectors, p=2, dim=-1) if normalize else vectors
