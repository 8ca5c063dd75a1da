"""The offline API: LLM.generate / LLM.chat, as in vLLM."""

from __future__ import annotations

import itertools
import os
from typing import Any, Sequence

from pagedlm.engine.input_processor import PromptType
from pagedlm.engine.llm_engine import LLMEngine
from pagedlm.engine_args import EngineArgs
from pagedlm.outputs import RequestOutput
from pagedlm.sampling_params import RequestOutputKind, SamplingParams

# The offline engine's core runs in this process unless this debug switch asks for an
# engine-core process (measured: docs/architecture.md, "Offline: in-process core").
MULTIPROCESSING_ENV = "PAGEDLM_ENABLE_MULTIPROCESSING"


class LLM:
    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        if model is None:
            from pagedlm.models.default_model import default_model

            model, _ = default_model()
        unknown = sorted(set(kwargs) - set(EngineArgs.__dataclass_fields__))
        if unknown:
            raise TypeError(f"LLM() got unexpected keyword arguments: {unknown}")
        multiprocess = os.environ.get(MULTIPROCESSING_ENV, "0") == "1"
        self.llm_engine = LLMEngine.from_engine_args(EngineArgs(model=model, **kwargs), multiprocess=multiprocess)
        self._counter = itertools.count()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def get_default_sampling_params(self) -> SamplingParams:
        """SamplingParams() with the model's generation_config.json defaults applied (unless the
        engine was built with generation_config="vllm"); used when generate gets none."""
        return SamplingParams(**self.llm_engine.model_config.generation_defaults)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        prompt_list = self._as_prompt_list(prompts)
        if sampling_params is None:
            sampling_params = self.get_default_sampling_params()
        params_list = self._as_params_list(sampling_params, len(prompt_list))
        request_ids = []
        try:
            for prompt, params in zip(prompt_list, params_list):
                request_id = str(next(self._counter))
                self.llm_engine.add_request(request_id, prompt, params)
                request_ids.append(request_id)
        except Exception:
            self.llm_engine.abort_request(request_ids)
            raise
        return self._run_engine(request_ids, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = True,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        tokenizer = self.get_tokenizer()
        prompts = []
        for conversation in conversations:
            ids = tokenizer.apply_chat_template(
                conversation, chat_template=chat_template, tokenize=True, return_dict=False,
                add_generation_prompt=add_generation_prompt and not continue_final_message,
                continue_final_message=continue_final_message, **(chat_template_kwargs or {}),
            )
            prompts.append({"prompt_token_ids": list(ids)})
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)

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
        if use_tqdm and len(request_ids) > 1:
            from tqdm.auto import tqdm

            pbar = tqdm(total=len(request_ids), desc="Processed prompts", dynamic_ncols=True)
        while engine.has_unfinished_requests():
            for output in engine.step():
                if output.finished:
                    finished[output.request_id] = output
                    if pbar is not None:
                        pbar.update(1)
        if pbar is not None:
            pbar.close()
        return [finished[r] for r in request_ids]


def _final_only(params: SamplingParams) -> SamplingParams:
    if not isinstance(params, SamplingParams) or params.output_kind == RequestOutputKind.FINAL_ONLY:
        return params
    final = params.clone()
    final.output_kind = RequestOutputKind.FINAL_ONLY
    return final
