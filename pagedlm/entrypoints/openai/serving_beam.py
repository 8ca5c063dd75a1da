"""``use_beam_search`` over HTTP: the frontend's beam search (pagedlm.beam_search) run on the
async engine, its result delivered as one final RequestOutput through the usual response
path (JSON, or SSE where it arrives in one piece, as in vLLM)."""

from __future__ import annotations

import asyncio
from typing import Any

from pagedlm.beam_search import BeamSearch, BeamSearchParams, check_logprobs_mode, run_beam_search_async
from pagedlm.engine.async_llm import AsyncLLM
from pagedlm.engine.detokenizer import IncrementalDetokenizer
from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.entrypoints.openai.protocol import SamplingFields
from pagedlm.lora.request import LoRARequest
from pagedlm.outputs import CompletionOutput, RequestOutput
from pagedlm.sampling_params import SamplingParams

# Fields that shape sampling, which beam search does not do: set, they are refused, not ignored.
BEAM_SEARCH_INCOMPATIBLE = (
    "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "seed", "stop",
    "stop_token_ids", "bad_words", "logit_bias", "allowed_token_ids", "min_tokens", "logprobs", "top_logprobs",
    "prompt_logprobs",
)


def beam_search_params(request: SamplingFields, max_tokens: int, max_logprobs: int,
                       logprobs_mode: str = "raw_logprobs") -> BeamSearchParams:
    try:
        check_logprobs_mode(logprobs_mode)
    except ValueError as e:
        raise OpenAIError(str(e), 400, "use_beam_search") from e
    defaults = type(request).model_fields
    clashing = [name for name in BEAM_SEARCH_INCOMPATIBLE
                if name in request.model_fields_set and getattr(request, name) not in (None, defaults[name].default)]
    if clashing:
        raise OpenAIError(f"use_beam_search cannot be combined with {', '.join(clashing)}.", 400, clashing[0])
    if max_logprobs != -1 and 2 * request.n > max_logprobs:
        raise OpenAIError(f"use_beam_search needs n <= {max_logprobs // 2} (each step reads 2*n logprobs; "
                          f"--max-logprobs is {max_logprobs}), got n={request.n}.", 400, "n")
    try:
        return BeamSearchParams(beam_width=request.n, max_tokens=max_tokens, ignore_eos=request.ignore_eos,
                                temperature=0.0 if request.temperature is None else request.temperature,
                                length_penalty=request.length_penalty,
                                include_stop_str_in_output=request.include_stop_str_in_output)
    except ValueError as e:
        raise OpenAIError(str(e), 400) from e


class BeamSearchStream:
    """Looks like a RequestStream: yields the one finished output; cancel() stops the search."""

    def __init__(self, engine: AsyncLLM, request_id: str, prompt: tuple[str | None, list[int]],
                 params: BeamSearchParams, eos_token_id: int | None, priority: int = 0,
                 text_params: SamplingParams | None = None, cache_salt: str | None = None,
                 lora_request: LoRARequest | None = None) -> None:
        self.engine = engine
        self.text_params = text_params or SamplingParams()  # skip_special_tokens & co. for the text
        self.salt = {"cache_salt": cache_salt} if cache_salt else {}
        self.request_id = request_id
        self.priority = priority  # of every engine request the search makes
        self.lora_request = lora_request  # likewise: each beam is scored under the adapter
        self.prompt = prompt
        self.search = BeamSearch([prompt[1]], params, eos_token_id)
        self._task: asyncio.Task | None = None
        self._done = False
        self._step = 0

    def __aiter__(self) -> "BeamSearchStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        self._task = asyncio.ensure_future(run_beam_search_async(self.search, self._generate))
        await self._task
        self._done = True
        return self._output()

    def cancel(self) -> None:
        self._done = True
        if self._task is not None:
            self._task.cancel()

    async def _generate(self, token_lists: list[list[int]], params: SamplingParams) -> list[RequestOutput]:
        self._step += 1
        return await asyncio.gather(*(self._one(f"{self.request_id}-beam{self._step}-{i}", ids, params)
                                      for i, ids in enumerate(token_lists)))

    async def _one(self, request_id: str, token_ids: list[int], params: SamplingParams) -> RequestOutput:
        final: Any = None
        async for output in self.engine.generate({"prompt_token_ids": token_ids, **self.salt}, params, request_id,
                                                 lora_request=self.lora_request, priority=self.priority):
            final = output
        return final

    def _output(self) -> RequestOutput:
        result = self.search.finish(self._decode, include_prompt_text=False)[0]
        prompt_len = len(self.prompt[1])
        outputs = [
            CompletionOutput(index=i, text=seq.text or "", token_ids=seq.tokens[prompt_len:],
                             cumulative_logprob=seq.cum_logprob, logprobs=None, finish_reason=seq.finish_reason,
                             stop_reason=seq.stop_reason)
            for i, seq in enumerate(result.sequences)
        ]
        return RequestOutput(self.request_id, self.prompt[0], self.prompt[1], None, outputs, finished=True)

    def _decode(self, token_ids: list[int]) -> str:
        """A finished beam's text, decoded as a sampled request's would be (the request's
        skip_special_tokens / spaces_between_special_tokens)."""
        tokenizer = self.engine.output_processor.tokenizer  # the event loop's tokenizer instance
        detokenizer = IncrementalDetokenizer(tokenizer, self.prompt[1], self.text_params)
        detokenizer.update(token_ids, stop_terminated=False)
        return detokenizer.get_next_output_text(finished=True, delta=False)
