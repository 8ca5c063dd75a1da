"""Plain data that crosses the scheduler / model runner / frontend boundaries.

No torch here. Scheduler <-> runner messages are dataclasses (they must pickle or msgpack,
so workers can live in other processes). Frontend <-> engine core messages are msgspec
structs sent as msgpack over ZMQ: the frontend sends ``EngineCoreInput`` (add / abort /
utility), the core answers ``EngineCoreEvent`` (per-step outputs, utility results, start-up
and death notices). Nothing here is ever pickled onto a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import msgspec

import numpy as np

from pagedlm.pooling_params import PoolingParams
from pagedlm.sampling_params import SamplingParams


@dataclass
class SchedulerStats:
    num_running_reqs: int = 0
    num_waiting_reqs: int = 0
    kv_cache_usage: float = 0.0
    num_preemptions_total: int = 0
    prefix_cache_queries_total: int = 0
    prefix_cache_hits_total: int = 0
    num_free_blocks: int = 0
    num_total_blocks: int = 0
    num_steps_total: int = 0  # schedule() calls, so a metrics reader sees each step once
    last_step_num_tokens: int = 0  # tokens (prefill + decode) of the latest step
    # Speculative decoding counters (cumulative; None when speculation is off):
    # num_drafts, num_draft_tokens, num_accepted_tokens, accepted per draft position.
    spec_decoding: dict[str, Any] | None = None
    # LoRA (vLLM's lora_requests_info): requests per adapter name; max_lora 0 when LoRA is off.
    max_lora: int = 0
    running_lora_adapters: dict[str, int] = field(default_factory=dict)
    waiting_lora_adapters: dict[str, int] = field(default_factory=dict)


class PromptEmbeds(msgspec.Struct, array_like=True, gc=False):
    """A prompt given as embeddings (vLLM's EmbedsPrompt), as it crosses processes: the raw
    bytes of a C-contiguous [num_tokens, hidden] tensor already cast to the model's dtype,
    with that dtype's torch name ("float32", "bfloat16", ...) and the shape. Never a pickle;
    pagedlm/engine/prompt_embeds.py turns it into a tensor and back."""

    data: bytes
    dtype: str
    shape: list[int]

    @property
    def num_tokens(self) -> int:
        return self.shape[0]


@dataclass(slots=True)
class NewRequestData:
    """A request the runner has not seen (or must rebuild after preemption), in full."""

    req_id: str
    prompt_token_ids: list[int]
    output_token_ids: list[int]  # non-empty only when resuming a preempted request
    sampling_params: SamplingParams
    block_ids: list[int]
    num_computed_tokens: int
    pooling_params: PoolingParams | None = None  # set for pooling requests (they sample nothing)
    lora_request: dict[str, Any] | None = None  # {"name", "id", "path"} of its LoRA adapter
    prompt_embeds: PromptEmbeds | None = None  # its prompt's embeddings (prompt_token_ids are placeholders)


@dataclass(slots=True)
class CachedRequestData:
    """A request the runner already holds: only what changed."""

    req_id: str
    new_block_ids: list[int]
    num_computed_tokens: int
    # Pipeline parallelism: the tokens this step computes (vLLM's new_token_ids). Only the
    # last stage samples, so the other stages learn each sampled token from here.
    new_token_ids: list[int] | None = None


@dataclass(slots=True)
class SchedulerOutput:
    scheduled_new_reqs: list[NewRequestData]
    scheduled_cached_reqs: list[CachedRequestData]
    num_scheduled_tokens: dict[str, int]  # req_id -> tokens computed this step
    total_num_scheduled_tokens: int
    finished_req_ids: set[str]  # finished or aborted since the last step: drop their state
    preempted_req_ids: set[str] = field(default_factory=set)
    # Structured outputs: the constrained requests that sample this step, and their allowed
    # tokens as a bitmask int32 [len(structured_output_request_ids), ceil(vocab / 32)].
    structured_output_request_ids: list[str] = field(default_factory=list)
    grammar_bitmask: np.ndarray | None = None
    # Speculative decoding: draft ids verified this step after each request's last token.
    scheduled_spec_decode_tokens: dict[str, list[int]] = field(default_factory=dict)

    @property
    def grammar_deferred(self) -> bool:
        """Constrained rows whose bitmask comes after launch (async scheduling)."""
        return bool(self.structured_output_request_ids) and self.grammar_bitmask is None


class LogprobsLists(msgspec.Struct, array_like=True, gc=False):
    """Per position: the target token first, then the top-k (or the request's logprob_token_ids)."""

    token_ids: list[list[int]]
    logprobs: list[list[float]]
    ranks: list[int]
    # Per position, the ranks of the entries after the first; None: their positions 1..k.
    top_ranks: list[list[int]] | None = None


@dataclass(slots=True)
class ModelRunnerOutput:
    req_ids: list[str]  # in scheduled order
    sampled_token_ids: list[list[int]]  # per request; empty while its prefill is partial
    logprobs: dict[str, LogprobsLists] = field(default_factory=dict)  # one row per sampled token
    prompt_logprobs: dict[str, LogprobsLists] = field(default_factory=dict)  # rows for this chunk
    # Pooling requests whose prompt was computed this step: the pooled vector (embed) or one
    # vector per prompt token (token_embed), as plain floats.
    pooler_output: dict[str, list[float] | list[list[float]]] = field(default_factory=dict)
    # Speculative decoding: drafts proposed for each request's next step.
    spec_token_ids: dict[str, list[int]] = field(default_factory=dict)
    # Requests the workers could not run as asked this step (req id -> why), e.g. their LoRA
    # adapter could not be read: their KV is not what their block hashes say, and the
    # scheduler fails them (finish_reason "error") while the rest of the step goes on.
    request_errors: dict[str, str] = field(default_factory=dict)


class EngineCoreOutput(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """What one request gained in one step: only the new tokens (a delta), never history."""

    req_id: str
    new_token_ids: list[int]
    new_logprobs: LogprobsLists | None = None
    new_prompt_logprobs: LogprobsLists | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" | "repetition"
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0
    error: str | None = None
    first_scheduled_time: float | None = None  # wall clock when the request first got a step
    # A finished pooling request's result: floats (embed) or lists of floats (token_embed).
    pooling_output: list[Any] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


# ---------------------------------------------------------------- frontend -> engine core


class EngineCoreRequest(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """A validated, tokenized request: everything the core needs and nothing textual."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None
    arrival_time: float
    lora_request: dict[str, Any] | None = None  # {"name", "id", "path"} of its LoRA adapter (LoRARequest.to_wire)
    cache_salt: str | None = None
    priority: int = 0
    pooling_params: PoolingParams | None = None  # set: a pooling request (sampling_params is a placeholder)
    client_index: int = 0  # the frontend (API server process) that sent it: its outputs go back there
    # A prompt given as embeddings: then prompt_token_ids are placeholders (0, one per row), as
    # vLLM's, and the model reads these rows instead of its embedding table at those positions.
    prompt_embeds: PromptEmbeds | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)


class AddRequest(msgspec.Struct, tag="add", array_like=True):
    request: EngineCoreRequest


class AbortRequests(msgspec.Struct, tag="abort", array_like=True):
    request_ids: list[str]
    # True when the frontend found a stop string: the request ends as "stop", not "abort".
    stopped: bool = False


class UtilityCall(msgspec.Struct, tag="utility", array_like=True):
    call_id: int
    method: str  # one of EngineCoreProc.UTILITY_METHODS
    args: list[Any] = []
    client_index: int = 0  # the frontend that asked: the result goes back there


class Shutdown(msgspec.Struct, tag="shutdown", array_like=True):
    pass


EngineCoreInput = Union[AddRequest, AbortRequests, UtilityCall, Shutdown]


# ---------------------------------------------------------------- engine core -> frontend


class EngineCoreOutputs(msgspec.Struct, tag="outputs", array_like=True, gc=False):
    engine_index: int
    outputs: list[EngineCoreOutput]
    scheduler_stats: SchedulerStats | None = None
    timestamp: float = 0.0


class UtilityResult(msgspec.Struct, tag="utility_result", array_like=True):
    engine_index: int
    call_id: int
    result: Any = None
    error: str | None = None


class EngineReady(msgspec.Struct, tag="ready", array_like=True):
    engine_index: int
    num_blocks: int


class EngineFailed(msgspec.Struct, tag="failed", array_like=True):
    """The core could not start (``during_startup``) or died while serving."""

    engine_index: int
    message: str
    during_startup: bool = False
    user_error: bool = False  # a setting the user can fix (bad path, KV cache too small)


EngineCoreEvent = Union[EngineCoreOutputs, UtilityResult, EngineReady, EngineFailed]
