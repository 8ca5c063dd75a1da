"""Sampling: SamplingParams of a batch -> SamplingMetadata -> Sampler -> token ids and logprobs."""

from pagedlm.sample.logprobs import LogprobsTensors, compute_logprobs, gather_logprobs
from pagedlm.sample.metadata import PenaltyMetadata, SamplingMetadata, build_sampling_metadata
from pagedlm.sample.sampler import Sampler, SamplerOutput

__all__ = [
    "LogprobsTensors",
    "PenaltyMetadata",
    "Sampler",
    "SamplerOutput",
    "SamplingMetadata",
    "build_sampling_metadata",
    "compute_logprobs",
    "gather_logprobs",
]
