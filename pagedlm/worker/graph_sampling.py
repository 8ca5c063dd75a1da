"""LM head and plain sampling (greedy and temperature) in CUDA graphs, replayed right after
the decode graph of the same batch size: for a decode step whose rows all sample plainly,
the host launches two graph replays and nothing else between the input copy and the
sampled ids (no logits gather, lm_head, softmax, RNG and argmax launches from Python).

"Plain" = what the graph computes exactly as the Sampler does: no logprobs, penalties,
top-k/top-p/min-p, seed, logit bias, allowed or bad words, min_tokens, grammar. Every other
step samples eagerly through the Sampler, unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from pagedlm.kernels import ops
from pagedlm.sampling_params import SAMPLING_EPS, SamplingParams

logger = logging.getLogger(__name__)


def is_plain(sp: SamplingParams, vocab_size: int) -> bool:
    """True when the graph's greedy/temperature sampling is exactly what the Sampler does."""
    return (sp.logprobs is None and sp.prompt_logprobs is None and sp.seed is None
            and abs(sp.presence_penalty) < SAMPLING_EPS and abs(sp.frequency_penalty) < SAMPLING_EPS
            and abs(sp.repetition_penalty - 1.0) < SAMPLING_EPS
            and not 0 < sp.top_k < vocab_size and sp.top_p >= 1.0 and sp.min_p <= SAMPLING_EPS
            and not sp.logit_bias and sp.allowed_token_ids is None and not sp.bad_words_token_ids
            and not sp.min_tokens)


def sample_plain(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """logits [B, V], temperature [B] (0 = greedy) -> ids [B], as the Sampler draws them (an
    unseeded random row gets the same token for the same RNG state), without host syncs:
    ``ops.sample_argmax`` with the temperatures (greedy rows take no noise)."""
    return ops.sample_argmax(logits, temperature)


class GraphSampler:
    """One sampling graph per decode graph size, reading that graph's hidden-state output."""

    def __init__(self, model: nn.Module, hidden_outputs: dict[int, torch.Tensor], pool, max_num_seqs: int,
                 device: torch.device) -> None:
        self.model, self.hidden_outputs, self.pool = model, hidden_outputs, pool
        self.temperature = torch.zeros(max_num_seqs, dtype=torch.float32, device=device)
        self._temperature_host = torch.zeros(max_num_seqs, dtype=torch.float32, pin_memory=True)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.sampled: dict[int, torch.Tensor] = {}
        self.num_replays = 0

    @torch.inference_mode()
    def capture(self) -> bool:
        """Capture every size; on any failure keep none (steps then sample eagerly)."""
        try:
            for size in sorted(self.hidden_outputs, reverse=True):
                body = lambda s=size: sample_plain(self.model.compute_logits(self.hidden_outputs[s]),  # noqa: E731
                                                   self.temperature[:s])
                body()  # warm up outside the capture
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    self.sampled[size] = body()
                self.graphs[size] = graph
        except Exception:  # noqa: BLE001 - an optimisation: never fatal
            logger.warning("LM head + sampling CUDA graphs not captured; decode samples eagerly", exc_info=True)
            self.graphs.clear()
            self.sampled.clear()
        return bool(self.graphs)

    def replay(self, size: int, temperatures: np.ndarray) -> torch.Tensor:
        """Sampled ids [len(temperatures)] after the decode graph of ``size`` has replayed;
        a copy, since the graph's output buffer is rewritten by the next replay."""
        n = len(temperatures)
        host = self._temperature_host.numpy()
        host[:n] = temperatures
        host[n:size] = 0.0  # padding rows: greedy, discarded
        self.temperature[:size].copy_(self._temperature_host[:size], non_blocking=True)
        self.graphs[size].replay()
        self.num_replays += 1
        return self.sampled[size][:n].clone()
