"""pagedlm: a high-throughput LLM inference and serving engine (a vLLM drop-in)."""

from pagedlm.logger import configure_logging
from pagedlm.version import __version__
from pagedlm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from pagedlm.beam_search import BeamSearchParams
from pagedlm.inputs import TextPrompt, TokensPrompt
from pagedlm.outputs import (
    CompletionOutput,
    EmbeddingOutput,
    EmbeddingRequestOutput,
    Logprob,
    PoolingOutput,
    PoolingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from pagedlm.pooling_params import PoolingParams
from pagedlm.engine_args import EngineArgs

configure_logging()

__all__ = [
    "LLM",
    "SamplingParams",
    "RequestOutputKind",
    "BeamSearchParams",
    "TextPrompt",
    "TokensPrompt",
    "StructuredOutputsParams",
    "RequestOutput",
    "CompletionOutput",
    "Logprob",
    "PoolingParams",
    "PoolingOutput",
    "PoolingRequestOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "ScoringOutput",
    "ScoringRequestOutput",
    "EngineArgs",
    "__version__",
]


def __getattr__(name: str):
    # LLM pulls in torch and transformers; import it on first use so `import pagedlm`
    # (e.g. for SamplingParams in a client) stays light.
    if name == "LLM":
        from pagedlm.entrypoints.llm import LLM

        return LLM
    if name == "LLMEngine":
        from pagedlm.engine.llm_engine import LLMEngine

        return LLMEngine
    raise AttributeError(f"module 'pagedlm' has no attribute {name!r}")
