"""The offline API: LLM.generate / LLM.chat / LLM.embed / LLM.classify / LLM.score /
LLM.reward / LLM.encode, as in vLLM."""

from __future__ import annotations

import itertools
import os
from typing import Any, Sequence

import torch
import torch.nn.functional as F  # noqa: N812

from pagedlm.arg_utils import translate_vllm_kwargs
from pagedlm.beam_search import BeamSearch, BeamSearchOutput, BeamSearchParams, check_logprobs_mode, run_beam_search
from pagedlm.engine.gc_heap import heap_frozen
from pagedlm.engine.input_processor import InvalidRequestError, PromptType
from pagedlm.engine.llm_engine import LLMEngine
from pagedlm.engine_args import EngineArgs
from pagedlm.entrypoints.chat_content import (NO_TEMPLATE_MESSAGE, harmony_thinking, resolve_content_format,
                                              template_message)
from pagedlm.lora.request import LoRARequest
from pagedlm.metrics import PrometheusStatLogger
from pagedlm.metrics_reader import Metric, get_metrics_snapshot
from pagedlm.entrypoints.score_utils import cross_encoder_prompt, pair_max_length
from pagedlm.outputs import (
    ClassificationRequestOutput,
    EmbeddingRequestOutput,
    PoolingRequestOutput,
    RequestOutput,
    ScoringOutput,
    ScoringRequestOutput,
)
from pagedlm.pooling_params import POOLING_TASKS, PoolingParams
from pagedlm.sampling_params import RequestOutputKind, SamplingParams

# The offline engine's core runs in this process unless this debug switch asks for an
# engine-core process (measured: docs/architecture.md, "Offline: in-process core").
MULTIPROCESSING_ENV = "PAGEDLM_ENABLE_MULTIPROCESSING"

# LLM.get_metrics() names series as vLLM's does, so vLLM scripts that read them keep working.
OFFLINE_METRICS_PREFIX = "vllm:"


class LLM:
    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        if model is None:
            from pagedlm.models.default_model import default_model

            model, _ = default_model()
        kwargs = translate_vllm_kwargs(kwargs, set(EngineArgs.__dataclass_fields__))  # vLLM's names
        unknown = sorted(set(kwargs) - set(EngineArgs.__dataclass_fields__))
        if unknown:
            raise TypeError(f"LLM() got unexpected keyword arguments: {unknown}")
        engine_args = EngineArgs(model=model, **kwargs)
        engine_args.log_notices()
        multiprocess = os.environ.get(MULTIPROCESSING_ENV, "0") == "1"
        self.llm_engine = LLMEngine.from_engine_args(engine_args, multiprocess=multiprocess)
        self._counter = itertools.count()
        self._stat_logger = PrometheusStatLogger(engine_args.served_model_names()[0], prefix=OFFLINE_METRICS_PREFIX,
                                                 engine_config=self.llm_engine.config)
        self._num_engines = engine_args.data_parallel_size
        self._sleep_level = 0  # the level of the last sleep (engine_sleep_state in get_metrics)

    def reset_prefix_cache(self) -> bool:
        """Drop every cached prefix block; False while requests still hold blocks."""
        return self.llm_engine.reset_prefix_cache()

    def sleep(self, level: int = 1) -> None:
        """vLLM's sleep mode (needs ``enable_sleep_mode=True``): empty the prefix cache,
        free the KV cache and offload the weights to host memory (level 1) or discard them
        (level 2: after ``wake_up``, load them again, e.g. ``collective_rpc("reload_weights")``).
        Requests are refused until ``wake_up``; sleep refuses while requests are unfinished."""
        self.llm_engine.sleep(level)
        self._sleep_level = level
        self._stat_logger.record_sleep_state(True, level, self._num_engines)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Restore what ``sleep`` freed: ``tags`` "weights" and/or "kv_cache" (None: both)."""
        self.llm_engine.wake_up(tags)
        asleep = self.llm_engine.is_sleeping()
        self._stat_logger.record_sleep_state(asleep, self._sleep_level, self._num_engines)

    def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = (),
                       kwargs: dict[str, Any] | None = None) -> list[Any]:
        """vLLM's LLM.collective_rpc for the worker methods pagedlm exposes ("reload_weights");
        one result per rank. Methods are named, never pickled callables."""
        if not isinstance(method, str):
            raise TypeError("collective_rpc takes a method name; callables are not sent to the engine")
        if kwargs:
            raise TypeError("collective_rpc: keyword arguments are not supported")
        if timeout is not None:
            raise ValueError("collective_rpc: timeout is not supported (the call waits for every rank)")
        return self.llm_engine.collective_rpc(method, tuple(args))

    def get_metrics(self) -> list[Metric]:
        """The engine's metrics (vLLM's names, ``vllm:`` prefix) as Counter/Gauge/Histogram."""
        return get_metrics_snapshot(self._stat_logger.registry, OFFLINE_METRICS_PREFIX)

    def beam_search(self, prompts: Sequence[PromptType], params: BeamSearchParams,
                    lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
                    use_tqdm: bool = False, concurrency_limit: int | None = None) -> list[BeamSearchOutput]:
        """vLLM's LLM.beam_search: each output's sequences carry prompt + generated tokens and
        their text, best first. ``lora_request``: one adapter for all prompts or one per prompt;
        ``concurrency_limit``: search at most that many prompts at a time (None: all at once)."""
        if not isinstance(params, BeamSearchParams):
            raise TypeError(f"params must be BeamSearchParams, got {type(params).__name__}")
        if concurrency_limit is not None and (not isinstance(concurrency_limit, int) or concurrency_limit < 1):
            raise ValueError(f"concurrency_limit must be a positive integer or None, got {concurrency_limit!r}")
        check_logprobs_mode(self.llm_engine.model_config.logprobs_mode)
        prompt_list = self._as_prompt_list(prompts)
        loras = _lora_list(lora_request, len(prompt_list))
        processor = self.llm_engine.input_processor
        token_lists = [processor.tokenize_prompt(p)[1] for p in prompt_list]
        salts = [processor.cache_salt(p) for p in prompt_list]
        chunk = concurrency_limit or max(1, len(prompt_list))
        pbar = None
        if use_tqdm:  # one tick per beam-search step, as vLLM's
            from tqdm.auto import tqdm

            make_bar = use_tqdm if callable(use_tqdm) else tqdm  # a factory, as in _run_engine
            pbar = make_bar(total=params.max_tokens * -(-len(prompt_list) // chunk), desc="Beam search",
                            dynamic_ncols=True)
        outputs: list[BeamSearchOutput] = []
        for start in range(0, len(prompt_list), chunk):
            search = BeamSearch(token_lists[start:start + chunk], params, processor.eos_token_id)

            def step(ids: list[list[int]], sp: SamplingParams, search: BeamSearch = search,
                     start: int = start) -> list[RequestOutput]:
                owners = [start + i for i in search.live_owners()]
                step_prompts = [{"prompt_token_ids": t, **({"cache_salt": salts[o]} if salts[o] else {})}
                                for t, o in zip(ids, owners)]
                return self.generate(step_prompts, sp, use_tqdm=False, lora_request=[loras[o] for o in owners])

            run_beam_search(search, step, on_step=pbar.update if pbar is not None else None)
            tokenizer = self.get_tokenizer()  # None under skip_tokenizer_init: empty texts
            outputs += search.finish(tokenizer.decode if tokenizer is not None else lambda ids: "",
                                     include_prompt_text=True)
        if pbar is not None:
            pbar.close()
        return outputs

    def _record_metrics(self) -> None:
        stats = self.llm_engine.get_stats()
        self._stat_logger.record_iteration(self.llm_engine.last_iteration_stats)
        self._stat_logger.record_engine_stats(0, stats)
        self._stat_logger.record_stats(stats)

    def get_tokenizer(self):
        """The engine's tokenizer (None with skip_tokenizer_init=True)."""
        return self.llm_engine.tokenizer

    def _require_tokenizer(self, what: str) -> Any:
        tokenizer = self.get_tokenizer()
        if tokenizer is None:
            raise ValueError(f"{what} needs a tokenizer, so it cannot be used with skip_tokenizer_init=True")
        return tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams() with the model's generation_config.json defaults applied (unless the
        engine was built with generation_config="vllm"); used when generate gets none."""
        return SamplingParams(**self.llm_engine.model_config.generation_defaults)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        priority: list[int] | None = None,
    ) -> list[RequestOutput]:
        """``lora_request``: one LoRARequest for every prompt, or a list with one per prompt
        (None: the base model); needs LLM(enable_lora=True). ``priority``: one int per prompt,
        lower served first; needs LLM(scheduling_policy="priority")."""
        prompt_list = self._as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params_list = self._as_params_list(sampling_params, len(prompt_list))
        if priority is not None and len(priority) != len(prompt_list):
            raise ValueError(f"priority has {len(priority)} entries for {len(prompt_list)} prompts: give one per prompt")
        return self._add_and_run(prompt_list, params_list, use_tqdm, _lora_list(lora_request, len(prompt_list)),
                                 priority)

    def embed(
        self,
        prompts: PromptType | Sequence[PromptType],
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        lora_request: Any = None,
    ) -> list[EmbeddingRequestOutput]:
        """One embedding vector per prompt (runner='pooling' models), in input order."""
        outputs = self.encode(prompts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens,
                              use_tqdm=use_tqdm, lora_request=lora_request, pooling_task="embed")
        return [EmbeddingRequestOutput.from_base(o) for o in outputs]

    def score(
        self,
        data_1: PromptType | Sequence[PromptType],
        data_2: PromptType | Sequence[PromptType],
        /,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | None = None,
        lora_request: Any = None,
    ) -> list[ScoringRequestOutput]:
        """Scores of text pairs, as vLLM's: with a cross-encoder (a sequence-classification
        model with one label) each pair is encoded as one sequence and scored by the model's
        head (sigmoid of its logit, unless use_activation=False); with an embedding model it is
        the cosine similarity of the two embeddings. ``data_1`` may be one text scored against
        every entry of ``data_2``, or as many texts as ``data_2`` (scored pairwise)."""
        first, second = self._as_prompt_list(data_1), self._as_prompt_list(data_2)
        if not first or not second:
            raise ValueError("score needs at least one text on each side")
        if len(first) == 1:
            first = first * len(second)
        if len(first) != len(second):
            raise ValueError(f"score pairs the texts of data_1 with those of data_2: got {len(first)} and "
                             f"{len(second)} (give one data_1 text, or as many as data_2)")
        if pooling_params is not None and not isinstance(pooling_params, PoolingParams):
            raise TypeError(f"pooling_params must be a PoolingParams, got {type(pooling_params).__name__}")
        pooler_config = self.llm_engine.model_config.pooler_config
        if pooler_config is not None and pooler_config.is_classifier:
            return self._cross_encoding_score(first, second, truncate_prompt_tokens, use_tqdm, pooling_params,
                                              lora_request)
        embedded = self.embed(first + second, truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=use_tqdm,
                              pooling_params=pooling_params, lora_request=lora_request)
        n = len(first)
        vectors = torch.tensor([o.outputs.embedding for o in embedded], dtype=torch.float32)
        scores = F.cosine_similarity(vectors[:n], vectors[n:], dim=-1).tolist()
        return [ScoringRequestOutput(f"{a.request_id}_{b.request_id}", ScoringOutput(score),
                                     a.prompt_token_ids + b.prompt_token_ids)
                for a, b, score in zip(embedded[:n], embedded[n:], scores)]

    def _cross_encoding_score(self, first: list[Any], second: list[Any], truncate_prompt_tokens: int | None,
                              use_tqdm: bool, pooling_params: PoolingParams | None,
                              lora_request: Any) -> list[ScoringRequestOutput]:
        max_length = pair_max_length(truncate_prompt_tokens, self.llm_engine.model_config.max_model_len)
        tokenizer, hf_config = self._require_tokenizer("scoring text pairs"), self.llm_engine.model_config.hf_config
        prompts = [cross_encoder_prompt(tokenizer, a, b, max_length, hf_config) for a, b in zip(first, second)]
        outputs = self.encode(prompts, pooling_params, use_tqdm=use_tqdm, lora_request=lora_request,
                              pooling_task="score")
        return [ScoringRequestOutput(o.request_id, ScoringOutput(float(o.outputs.data[0])), o.prompt_token_ids)
                for o in outputs]

    def classify(
        self,
        prompts: PromptType | Sequence[PromptType],
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        lora_request: Any = None,
    ) -> list[ClassificationRequestOutput]:
        """Class probabilities per prompt with a sequence-classification model (vLLM's): softmax
        over the labels, sigmoid for one label (the checkpoint's problem_type can ask for
        others), or the logits with PoolingParams(use_activation=False)."""
        if self.llm_engine.model_config.pooler_config is None:
            raise ValueError("LLM.classify() is only supported for pooling models: this model generates text "
                             "(classification needs a *ForSequenceClassification checkpoint)")
        outputs = self.encode(prompts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens,
                              use_tqdm=use_tqdm, lora_request=lora_request, pooling_task="classify")
        return [ClassificationRequestOutput.from_base(o) for o in outputs]

    def reward(
        self,
        prompts: PromptType | Sequence[PromptType],
        /,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        lora_request: Any = None,
    ) -> list[PoolingRequestOutput]:
        """vLLM's reward: with a reward model (Qwen2ForRewardModel) one reward per prompt token,
        ``outputs.data`` a [num_prompt_tokens, 1] tensor, through the sigmoid unless
        PoolingParams(use_activation=False) asks for the raw head outputs (the token_classify
        pooling task)."""
        pooler_config = self.llm_engine.model_config.pooler_config
        if pooler_config is None:
            raise ValueError("LLM.reward() is only supported for pooling models: this model generates text "
                             "(rewards need a reward model such as Qwen2ForRewardModel)")
        return self.encode(prompts, pooling_params, truncate_prompt_tokens=truncate_prompt_tokens,
                           use_tqdm=use_tqdm, lora_request=lora_request, pooling_task="token_classify")

    def start_profile(self, *args: Any, **kwargs: Any) -> None:
        """vLLM's torch-profiler hooks (VLLM_TORCH_PROFILER_DIR); pagedlm has no profiler hook."""
        raise NotImplementedError("LLM.start_profile: pagedlm has no built-in torch profiler (vLLM's "
                                  "VLLM_TORCH_PROFILER_DIR); wrap the generate call in torch.profiler.profile "
                                  "yourself (the default uni executor runs the model in this process)")

    def stop_profile(self, *args: Any, **kwargs: Any) -> None:
        """See start_profile."""
        raise NotImplementedError("LLM.stop_profile: pagedlm has no built-in torch profiler (see start_profile)")

    def encode(
        self,
        prompts: PromptType | Sequence[PromptType],
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = True,
        lora_request: Any = None,
        pooling_task: str | None = None,
    ) -> list[PoolingRequestOutput]:
        """Pooled hidden states per prompt: ``pooling_task="embed"`` (the default) gives one
        vector, ``"token_embed"`` (alias ``"encode"``) one vector per prompt token; with a
        sequence-classification model ``"classify"`` the class probabilities and ``"score"``
        a cross-encoder's score (of a prompt holding its pair, e.g. with ``token_type_ids``)."""
        if lora_request is not None:
            raise ValueError("lora_request is not supported for pooling models")
        task = {None: "embed", "encode": "token_embed"}.get(pooling_task, pooling_task)
        if task not in POOLING_TASKS:
            raise ValueError(f"pooling_task must be one of {POOLING_TASKS} or 'encode', got {pooling_task!r}")
        prompt_list = self._as_prompt_list(prompts)
        params_list = _pooling_params_list(pooling_params, len(prompt_list), task, truncate_prompt_tokens)
        outputs = self._add_and_run(prompt_list, params_list, use_tqdm)
        failed = [o.error for o in outputs if o.error is not None]
        if failed:
            raise RuntimeError(f"pooling failed: {failed[0]}")
        return outputs

    def _add_and_run(self, prompt_list: list[PromptType], params_list: list[Any], use_tqdm: bool,
                     lora_list: list[LoRARequest | None] | None = None, priority: list[int] | None = None) -> list[Any]:
        request_ids = []
        try:
            for i, (prompt, params) in enumerate(zip(prompt_list, params_list)):
                request_id = str(next(self._counter))
                self.llm_engine.add_request(request_id, prompt, params,
                                            lora_request=lora_list[i] if lora_list else None,
                                            priority=priority[i] if priority else 0)
                request_ids.append(request_id)
        except BaseException:  # a bad prompt, or Ctrl-C while tokenizing: none of them is left queued
            self.llm_engine.abort_request(request_ids)
            raise
        return self._run_engine(request_ids, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        """vLLM's LLM.chat: each conversation through the chat template (``tools`` go to the
        template too), then generate. ``chat_template_content_format``: "string" (text parts
        joined), "openai" (a list of text parts) or "auto" (openai when the template loops over
        a message's content). ``mm_processor_kwargs`` (vLLM's multimodal processor settings)
        is refused when given: pagedlm's chat takes text parts only."""
        if mm_processor_kwargs:
            raise ValueError("mm_processor_kwargs is not supported: pagedlm's LLM.chat takes text content only")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = chat_prompts(self._require_tokenizer("LLM.chat"), conversations, chat_template, chat_template_content_format,
                               add_generation_prompt, continue_final_message, tools, chat_template_kwargs)
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm, lora_request=lora_request)

    @staticmethod
    def _as_prompt_list(prompts: PromptType | Sequence[PromptType]) -> list[PromptType]:
        if isinstance(prompts, (str, dict)):
            return [prompts]
        prompts = list(prompts)
        if prompts and all(isinstance(t, int) for t in prompts):
            return [prompts]  # a single prompt given as token ids
        return prompts

    @staticmethod
    def _as_params_list(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
        """One params per prompt, each asking for its final output only (generate returns
        finished requests; building outputs for running ones would be wasted work)."""
        if params is None:
            params = SamplingParams()
        if isinstance(params, SamplingParams):
            return [_final_only(params)] * n
        params = list(params)
        if len(params) != n:
            raise ValueError(f"got {len(params)} sampling params for {n} prompts")
        finals: dict[int, SamplingParams] = {}
        for p in params:
            if id(p) not in finals:
                finals[id(p)] = _final_only(p)
        return [finals[id(p)] for p in params]

    def _run_engine(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        engine = self.llm_engine
        finished: dict[str, RequestOutput] = {}
        pbar = None
        if use_tqdm:  # (one prompt too, as vLLM's: a factory the caller passes is always used)
            from tqdm.auto import tqdm

            # As vLLM's: use_tqdm may be the progress bar's factory (functools.partial(tqdm, leave=False)).
            make_bar = use_tqdm if callable(use_tqdm) else tqdm
            pbar = make_bar(total=len(request_ids), desc="Processed prompts", dynamic_ncols=True)
        try:
            with heap_frozen():  # no full collections over the engine's start-up objects (gc_heap.py)
                while engine.has_unfinished_requests():
                    step_outputs = engine.step()
                    self._record_metrics()
                    for output in step_outputs:
                        if output.finished:
                            finished[output.request_id] = output
                            if pbar is not None:
                                pbar.update(1)
        except BaseException:
            # Interrupted (Ctrl-C) or failed mid-step: the engine core may have scheduled a step the
            # runner never finished. Abort the requests left, so their blocks go back and the next
            # call neither runs them nor trips over the half-done step.
            engine.abort_request([r for r in request_ids if r not in finished])
            raise
        finally:
            if pbar is not None:
                pbar.close()
        return [finished[r] for r in request_ids]


def chat_prompts(tokenizer: Any, conversations: list[list[dict]], chat_template: str | None = None,
                 content_format: str = "auto", add_generation_prompt: bool = True,
                 continue_final_message: bool = False, tools: list[dict[str, Any]] | None = None,
                 chat_template_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each conversation through the chat template -> a tokens prompt that keeps its text
    (RequestOutput.prompt, as vLLM). Messages reach the template as the server's do
    (chat_content.template_message); an image or audio part is refused: the template would
    turn it into a placeholder and drop it."""
    template = chat_template or tokenizer.chat_template
    if not template:
        raise ValueError(NO_TEMPLATE_MESSAGE)
    content_format = resolve_content_format(content_format, template)
    # As vLLM's, chat_template_kwargs may override the arguments (add_generation_prompt, ...).
    kwargs = {"chat_template": chat_template, "add_generation_prompt": add_generation_prompt,
              "continue_final_message": continue_final_message, "tools": tools, **(chat_template_kwargs or {})}
    kwargs["add_generation_prompt"] = kwargs["add_generation_prompt"] and not kwargs["continue_final_message"]
    prompts = []
    for conversation in conversations:
        try:
            conversation = harmony_thinking(
                [template_message(m, i, content_format) for i, m in enumerate(conversation)], template)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        text = tokenizer.apply_chat_template(conversation, tokenize=False, **kwargs)
        # The rendered text holds the template's own special tokens (BOS...): none are added.
        ids = tokenizer.encode(text, add_special_tokens=False)
        prompts.append({"prompt_token_ids": list(ids), "prompt": text})
    return prompts


def _lora_list(lora_request: Any, n: int) -> list[LoRARequest | None] | None:
    if lora_request is None or isinstance(lora_request, LoRARequest):
        return [lora_request] * n
    if isinstance(lora_request, (list, tuple)):
        if len(lora_request) != n:
            raise ValueError(f"got {len(lora_request)} lora requests for {n} prompts")
        return list(lora_request)
    raise TypeError(f"lora_request must be a LoRARequest or a list of them, got {type(lora_request).__name__}")


def _final_only(params: SamplingParams) -> SamplingParams:
    if not isinstance(params, SamplingParams) or params.output_kind == RequestOutputKind.FINAL_ONLY:
        return params
    final = params.clone()
    final.output_kind = RequestOutputKind.FINAL_ONLY
    return final


def _pooling_params_list(params: PoolingParams | Sequence[PoolingParams] | None, n: int, task: str,
                         truncate_prompt_tokens: int | None) -> list[PoolingParams]:
    if params is None or isinstance(params, PoolingParams):
        params_list = [params or PoolingParams()] * n
    else:
        params_list = list(params)
        if len(params_list) != n:
            raise ValueError(f"got {len(params_list)} pooling params for {n} prompts")
    out = []
    for p in params_list:
        if not isinstance(p, PoolingParams):
            raise TypeError(f"pooling_params must be PoolingParams, got {type(p).__name__}")
        p = p.clone()
        if p.task is not None and p.task != task:
            raise ValueError(f"pooling_params.task {p.task!r} conflicts with the pooling task {task!r}")
        p.task = task
        if truncate_prompt_tokens is not None:
            if p.truncate_prompt_tokens not in (None, truncate_prompt_tokens):
                raise ValueError("truncate_prompt_tokens is set both as an argument and in pooling_params")
            p.truncate_prompt_tokens = truncate_prompt_tokens
            p.__post_init__()  # validate the value
        out.append(p)
    return out
