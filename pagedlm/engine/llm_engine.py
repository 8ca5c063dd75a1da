"""LLMEngine: the synchronous engine front — input processing, the engine core, outputs.

The offline LLM drives it directly; the async server engine drives it from a thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from pagedlm.config import EngineConfig, dump_config
from pagedlm.engine.engine_core import EngineCore
from pagedlm.engine.input_processor import InputProcessor, InvalidRequestError, PromptType, load_tokenizer
from pagedlm.engine.output_processor import OutputProcessor
from pagedlm.engine.request import Request
from pagedlm.engine.scheduler import SchedulerStats
from pagedlm.engine_args import EngineArgs
from pagedlm.outputs import RequestOutput
from pagedlm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class EngineStats(SchedulerStats):
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_config = config.model_config
        logger.info("Initialising engine: %s", dump_config(config))
        self.tokenizer = load_tokenizer(config.model_config)
        self.input_processor = InputProcessor(config.model_config, self.tokenizer)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.engine_core = EngineCore(config)
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    @classmethod
    def from_engine_args(cls, args: EngineArgs) -> "LLMEngine":
        return cls(args.create_engine_config())

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams,
                    arrival_time: float | None = None) -> None:
        """Validate and queue a request; raises InvalidRequestError (a ValueError) on bad input."""
        if request_id in self.output_processor.parents:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        arrival_time = arrival_time if arrival_time is not None else time.time()
        text, request = self.input_processor.process(request_id, prompt, params, arrival_time)
        children = self._fan_out(request)
        self.output_processor.add_request(request_id, text, children)
        for child in children:
            self.engine_core.add_request(child)
        self.prompt_tokens_total += request.num_prompt_tokens

    @staticmethod
    def _fan_out(request: Request) -> list[Request]:
        """n > 1 becomes n sequences sharing the prompt; their prompt blocks are shared by
        the prefix cache. A seeded request gives choice i the seed + i, as vLLM does."""
        params = request.sampling_params
        if params.n == 1:
            return [request]
        children = []
        for i in range(params.n):
            child_params = params.clone()
            child_params.n = 1
            if params.seed is not None:
                child_params.seed = params.seed + i
            children.append(Request(f"{i}_{request.request_id}", request.prompt_token_ids, child_params,
                                    request.eos_token_id, request.arrival_time))
        return children

    def abort_request(self, request_ids: str | list[str]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else request_ids
        for request_id in ids:
            self.engine_core.abort_requests(self.output_processor.abort_request(request_id))

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished() or self.engine_core.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.parents)

    def step(self, delta: bool = False, final_only: bool = False) -> list[RequestOutput]:
        """Run one engine step; returns outputs of the requests that progressed (or, with
        ``final_only``, of those that finished). ``delta`` gives each choice only the text
        produced since the last call."""
        core_outputs = self.engine_core.step()
        self.generation_tokens_total += sum(len(o.new_token_ids) for o in core_outputs)
        outputs, stopped = self.output_processor.process_outputs(core_outputs, delta, final_only)
        if stopped:
            self.engine_core.stop_requests(stopped)
        return outputs

    def get_stats(self) -> EngineStats:
        s = self.engine_core.stats()
        return EngineStats(**vars(s), prompt_tokens_total=self.prompt_tokens_total,
                           generation_tokens_total=self.generation_tokens_total)

    def get_tokenizer(self):
        return self.tokenizer

    def reset_prefix_cache(self) -> bool:
        return self.engine_core.reset_prefix_cache()
