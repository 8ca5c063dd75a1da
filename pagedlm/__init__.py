"""pagedlm: a high-throughput LLM inference and serving engine (a vLLM drop-in)."""

from pagedlm.logger import configure_logging
from pagedlm.version import __version__, __version_tuple__
from pagedlm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams
from pagedlm.beam_search import BeamSearchParams
from pagedlm.inputs import PromptType, TextPrompt, TokensPrompt
from pagedlm.outputs import (
    CompletionOutput,
    ClassificationOutput,
    ClassificationRequestOutput,
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
from pagedlm.engine_args import AsyncEngineArgs, EngineArgs

configure_logging()

__all__ = [
    "LLM",
    "SamplingParams",
    "RequestOutputKind",
    "BeamSearchParams",
    "TextPrompt",
    "TokensPrompt",
    "PromptType",
    "StructuredOutputsParams",
    "RequestOutput",
    "CompletionOutput",
    "Logprob",
    "PoolingParams",
    "PoolingOutput",
    "PoolingRequestOutput",
    "ClassificationOutput",
    "ClassificationRequestOutput",
    "EmbeddingOutput",
    "EmbeddingRequestOutput",
    "ScoringOutput",
    "ScoringRequestOutput",
    "EngineArgs",
    "AsyncEngineArgs",
    "LLMEngine",
    "AsyncLLMEngine",
    "__version__",
    "__version_tuple__",
]

# Names `from vllm import ...` offers for features pagedlm lacks: importing one says so.
_NOT_IN_PAGEDLM = {
    "ModelRegistry": "registering out-of-tree models is not supported by pagedlm",
    "initialize_ray_cluster": "pagedlm starts Ray itself with --distributed-executor-backend ray",
}


def __getattr__(name: str):
    # LLM pulls in torch and transformers; import it on first use so `import pagedlm`
    # (e.g. for SamplingParams in a client) stays light.
    if name == "LLM":
        from pagedlm.entrypoints.llm import LLM

        return LLM
    if name == "LLMEngine":
        from pagedlm.engine.llm_engine import LLMEngine

        return LLMEngine
    if name == "AsyncLLMEngine":  # vLLM's name for its async engine (AsyncLLM)
        from pagedlm.engine.async_llm import AsyncLLM

        return AsyncLLM
    if name in _NOT_IN_PAGEDLM:
        raise ImportError(f"pagedlm has no {name}: {_NOT_IN_PAGEDLM[name]}.", name=name)
    raise AttributeError(f"module 'pagedlm' has no attribute {name!r}")
