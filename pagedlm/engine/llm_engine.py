"""LLMEngine: the synchronous frontend behind the offline ``LLM``.

Text work (tokenize, validate, detokenize, stop strings) happens here; scheduling and the
model happen in the engine core, reached through a core client: in this process by default
(``InprocClient``), or in engine-core processes (``MPClient``) with ``multiprocess=True``.
"""

from __future__ import annotations

import logging
import queue
from dataclasses import dataclass
from typing import Any

from pagedlm.config import EngineConfig, dump_config
from pagedlm.engine.core_client import InprocClient, MPClient
from pagedlm.engine.input_processor import InputProcessor, InvalidRequestError, PromptType, fan_out, load_tokenizer
from pagedlm.engine.messages import SchedulerStats
from pagedlm.engine.output_processor import IterationStats, OutputProcessor
from pagedlm.engine.sleep_mode import SLEEPING_MESSAGE, EngineSleepingError, check_sleep_args, utility_errors_typed
from pagedlm.engine_args import EngineArgs
from pagedlm.outputs import RequestOutput
from pagedlm.pooling_params import PoolingParams
from pagedlm.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


@dataclass
class EngineStats(SchedulerStats):
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0


class LLMEngine:
    def __init__(self, config: EngineConfig, engine_args: EngineArgs | None = None,
                 multiprocess: bool = False, data_parallel_size: int | None = None) -> None:
        """``data_parallel_size``: engine cores to start (None: ``engine_args.data_parallel_size``,
        else 1)."""
        if data_parallel_size is None:
            data_parallel_size = engine_args.data_parallel_size if engine_args is not None else 1
        self.config = config
        self.model_config = config.model_config
        logger.info("Initialising engine: %s", dump_config(config))
        self.tokenizer = load_tokenizer(config.model_config)
        self.input_processor = InputProcessor(config.model_config, self.tokenizer, config.lora_config,
                                              config.scheduler_config.scheduling_policy,
                                              config.logits_processors)
        self.output_processor = OutputProcessor(self.tokenizer, config.scheduler_config.stream_interval)
        if data_parallel_size < 1:
            raise ValueError(f"data_parallel_size must be at least 1, got {data_parallel_size}")
        if multiprocess or data_parallel_size > 1:
            if engine_args is None:
                raise ValueError("a multiprocess engine needs the EngineArgs to start its core process")
            self.core_client: InprocClient | MPClient = MPClient(engine_args, data_parallel_size)
        else:
            self.core_client = InprocClient(config)
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self._scheduler_stats = SchedulerStats()
        self.last_iteration_stats = IterationStats()
        self._asleep = False  # this frontend put the engine to sleep (requests are refused at once)

    @classmethod
    def from_engine_args(cls, args: EngineArgs, multiprocess: bool = False,
                         data_parallel_size: int | None = None) -> "LLMEngine":
        args.log_notices()
        return cls(args.create_engine_config(), args, multiprocess, data_parallel_size)

    @property
    def engine_core(self):
        """The in-process EngineCore (tests and benchmarks reach the runner through it)."""
        return getattr(self.core_client, "engine_core", None)

    def add_request(self, request_id: str, prompt: PromptType, params: SamplingParams | PoolingParams,
                    arrival_time: float | None = None, lora_request: Any = None, priority: int = 0) -> None:
        """Validate and queue a request; raises InvalidRequestError (a ValueError) on bad input.
        ``priority``: lower values are served first under --scheduling-policy priority."""
        if self._asleep:
            raise EngineSleepingError(SLEEPING_MESSAGE)
        if request_id in self.output_processor.parents:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        text, request = self.input_processor.process(request_id, prompt, params, arrival_time, lora_request,
                                                     priority)
        children = fan_out(request)
        self.output_processor.add_request(request_id, text, children)
        try:
            self.core_client.add_requests(children)
        except BaseException as e:  # not sent: forget it, or has_unfinished_requests stays true for ever
            self.output_processor.abort_request(request_id)
            if isinstance(e, OverflowError):  # an int the engine-core message (64-bit) cannot carry
                raise InvalidRequestError(f"request {request_id!r}: a value does not fit in 64 bits ({e})") from e
            raise
        # Every sequence prefills the prompt (vLLM counts n of them for n > 1; later ones may hit
        # the prefix cache, which prefix_cache_hits shows).
        self.prompt_tokens_total += request.num_prompt_tokens * len(children)

    def abort_request(self, request_ids: str | list[str]) -> None:
        ids = [request_ids] if isinstance(request_ids, str) else request_ids
        for request_id in ids:
            self.core_client.abort_requests(self.output_processor.abort_request(request_id))

    def has_unfinished_requests(self) -> bool:
        return self.output_processor.has_unfinished() or self.core_client.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.parents)

    def step(self) -> list[RequestOutput]:
        """Run one engine step; returns the outputs that the requests' output kinds ask for."""
        try:
            core_outputs = self.core_client.get_output()
        except queue.Empty:
            return []
        if core_outputs.scheduler_stats is not None:
            self._scheduler_stats = core_outputs.scheduler_stats
        processed = self.output_processor.process_outputs(core_outputs.outputs)
        self.last_iteration_stats = processed.iteration_stats  # for LLM.get_metrics()
        self.generation_tokens_total += processed.iteration_stats.num_generation_tokens
        if processed.stopped_child_ids:
            self.core_client.abort_requests(processed.stopped_child_ids, stopped=True)
        return processed.request_outputs

    def get_stats(self) -> EngineStats:
        stats = self._scheduler_stats
        if isinstance(self.core_client, InprocClient):
            stats = self.core_client.engine_core.stats()
        return EngineStats(**vars(stats), prompt_tokens_total=self.prompt_tokens_total,
                           generation_tokens_total=self.generation_tokens_total)

    def get_tokenizer(self):
        return self.tokenizer

    def reset_prefix_cache(self) -> bool:
        return all(self.core_client.call_utility("reset_prefix_cache"))

    def _call(self, method: str, *args: Any) -> list[Any]:
        with utility_errors_typed():
            return self.core_client.call_utility(method, *args)

    def sleep(self, level: int = 1) -> None:
        """vLLM's sleep mode: empty the prefix cache, free the KV cache and offload (level 1)
        or discard (level 2) the weights. Raises SleepModeError when sleep mode is off or
        requests are unfinished."""
        check_sleep_args(self.config.cache_config.enable_sleep_mode, level)
        self._call("sleep", level)
        self._asleep = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Restore what sleep freed: ``tags`` "weights" and/or "kv_cache" (None: both)."""
        check_sleep_args(self.config.cache_config.enable_sleep_mode, tags=tags)
        self._call("wake_up", list(tags) if tags is not None else None)
        self._asleep = self.is_sleeping()

    def is_sleeping(self) -> bool:
        return any(self._call("is_sleeping"))

    def collective_rpc(self, method: str, args: tuple = ()) -> list[Any]:
        """Call a worker method on every rank of every engine core (EngineCore.RPC_METHODS,
        e.g. "reload_weights"); their results, rank by rank."""
        return [r for per_core in self._call("collective_rpc", method, *args) for r in per_core]

    def shutdown(self) -> None:
        self.core_client.shutdown()

    def __del__(self) -> None:
        client = getattr(self, "core_client", None)
        if client is not None:
            client.shutdown()
