"""Request: the scheduler's view of one sequence (pure Python, no torch)."""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

from pagedlm.pooling_params import PoolingParams
from pagedlm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from pagedlm.engine.messages import EngineCoreRequest


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    WAITING_FOR_GRAMMAR = 3  # in the waiting queue, skipped until its grammar has compiled
    FINISHED_STOPPED = 4
    FINISHED_LENGTH_CAPPED = 5
    FINISHED_ABORTED = 6
    FINISHED_ERROR = 7
    FINISHED_REPETITION = 8  # SamplingParams.repetition_detection found a repeated pattern

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH_CAPPED: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
    RequestStatus.FINISHED_REPETITION: "repetition",  # (vLLM's FinishReason.REPETITION)
}


class Request:
    def __init__(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        eos_token_id: int | None = None,
        arrival_time: float | None = None,
        cache_salt: str | None = None,
        pooling_params: PoolingParams | None = None,
        lora_request: dict[str, Any] | None = None,
        priority: int = 0,
        prompt_embeds: Any = None,
    ) -> None:
        self.request_id = request_id
        self.prompt_token_ids = list(prompt_token_ids)
        self.sampling_params = sampling_params
        self.eos_token_id = eos_token_id
        self.arrival_time = arrival_time if arrival_time is not None else time.time()
        self.cache_salt = cache_salt
        # A pooling request samples no token: it finishes once its prompt is computed.
        self.pooling_params = pooling_params
        self.lora_request = lora_request  # {"name", "id", "path"}; None: the base model
        self.priority = priority  # --scheduling-policy priority: lower values are served first
        # messages.PromptEmbeds of a prompt given as embeddings (prompt_token_ids are placeholders).
        self.prompt_embeds = prompt_embeds
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(prompt_token_ids)
        self.num_computed_tokens = 0
        # Tokens the runner has sampled (or will sample in a step already scheduled) that the
        # scheduler has not received yet. With async scheduling the next step is scheduled
        # before the last one's tokens arrive, so the count of tokens to compute includes them.
        self.num_pending_tokens = 0
        self.num_cached_tokens = -1  # set when first scheduled
        self.status = RequestStatus.WAITING
        self.stop_reason: int | str | None = None
        self.error: str | None = None
        self.num_preemptions = 0
        self.num_prompt_logprobs_sent = 0  # prompt positions scored and delivered (engine/prompt_logprobs.py)
        self.first_scheduled_time: float | None = None
        # Chain hashes of the full blocks of all_token_ids, filled by the KV cache manager.
        self.block_hashes: list[bytes] = []
        # Speculative decoding: draft tokens proposed after its last step, verified in the next.
        self.spec_token_ids: list[int] = []
        # The engine core's grammar state (structured_output.manager.RequestGrammar) when constrained.
        self.structured_output: Any = None

    @classmethod
    def from_engine_core_request(cls, req: "EngineCoreRequest") -> "Request":
        return cls(req.request_id, req.prompt_token_ids, req.sampling_params, req.eos_token_id,
                   req.arrival_time, req.cache_salt, req.pooling_params, req.lora_request, req.priority,
                   req.prompt_embeds)

    @property
    def block_hash_extra(self) -> str | None:
        """What besides the tokens keys its cached KV blocks: the cache salt and the LoRA
        adapter (another adapter computes other KV for the same tokens)."""
        if not self.lora_request:
            return None if self.cache_salt is None else f"salt:{self.cache_salt}"
        lora = f"lora:{self.lora_request['id']}:{len(self.lora_request['path'])}:{self.lora_request['path']}"
        # Tagged and length-prefixed: no salt a client sends can spell another salt's or adapter's key.
        return lora if self.cache_salt is None else f"{lora}\x00salt:{self.cache_salt}"

    def block_extra(self, start: int, end: int) -> str | None:
        """The extra key of the block of tokens [start, end): ``block_hash_extra``, and for a
        prompt given as embeddings the digest of the block's embedding rows (vLLM's
        _gen_prompt_embeds_extra_hash_keys): its placeholder token ids never match a token
        prompt's blocks, and only identical embeddings share a block."""
        extra = self.block_hash_extra
        if self.prompt_embeds is None or start >= self.num_prompt_tokens:
            return extra
        from pagedlm.engine.prompt_embeds import block_digest  # each block's hash is made once

        digest = block_digest(self.prompt_embeds, start, min(end, self.num_prompt_tokens))
        return f"embeds:{digest}" if extra is None else f"{extra}\x00embeds:{digest}"

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def max_tokens(self) -> int:
        return self.sampling_params.max_tokens or 1 << 62

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
