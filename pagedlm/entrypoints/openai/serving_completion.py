"""POST /v1/completions: prompts -> engine requests -> text_completion JSON or SSE chunks."""

from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import Response

from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.entrypoints.openai.protocol import CompletionRequest
from pagedlm.entrypoints.openai.serving_common import (
    ChoiceProgress,
    OpenAIServing,
    RequestGroup,
    Usage,
    clamp_logprob,
    logprob_token,
    partial_usage,
    sse,
    stream_usage_flags,
    to_openai_error,
)
from pagedlm.outputs import CompletionOutput, Logprob, RequestOutput


class OpenAIServingCompletion(OpenAIServing):
    async def create_completion(self, request: CompletionRequest, raw: Request) -> Response:
        self.check_request(request)
        if request.prompt is None and not request.prompt_embeds:
            raise OpenAIError("prompt: field required (or prompt_embeds, with --enable-prompt-embeds)", 400, "prompt")
        if request.suffix is not None:
            raise OpenAIError("suffix is not supported.", 400, "suffix")
        if not request.logprob_token_ids:  # (the listed ids replace the top-k: vLLM's own cap)
            self.check_logprobs("logprobs", request.logprobs)
        if request.echo and not request.return_token_ids:
            self.require_tokenizer("echo (the prompt's text)", "echo")
        # echo with max_tokens 0 (lm-eval's loglikelihood requests): the prompt alone, with its
        # logprobs; as vLLM, one token is generated and left out of the text.
        params = self.make_params(request, request.logprobs, 1 if _echo_only(request) else request.max_tokens)
        # As vLLM's: the prompts given as embeddings first, then the text / token prompts.
        embeds = self._load_embeds(request)
        prompts = [(None, [0] * int(t.shape[0])) for t in embeds]
        prompts += [await self._tokenize(p, request) for p in request.prompts()]
        for _, token_ids in prompts:
            self.check_length(len(token_ids), request.max_tokens)
        if request.echo and request.logprobs is not None:
            # The echoed prompt carries its own logprobs (the first token has none); -1 (the
            # whole vocabulary) is already the most.
            if params.prompt_logprobs != -1:
                params.prompt_logprobs = max(params.prompt_logprobs or 0, request.logprobs)
        request_id = self.response_id("cmpl", request, raw)
        group = await self.start(request_id, prompts, params, bool(request.stream), request,
                                 prompt_embeds=embeds or None)
        model = self.model_name(request)
        return await self.respond(
            raw, group, bool(request.stream),
            lambda g: self._stream(request, g, request_id, model),
            lambda g: self._full(request, g, request_id, model),
        )

    def _load_embeds(self, request: CompletionRequest) -> list[Any]:
        """The request's prompt_embeds (base64 torch.save payloads) as [num_tokens, hidden]
        tensors, cut to truncate_prompt_tokens; only under --enable-prompt-embeds."""
        payloads = request.prompt_embeds
        if not payloads:
            return []
        model_config = self.engine.model_config
        if not model_config.enable_prompt_embeds:
            raise OpenAIError("prompt_embeds is only accepted when the server was started with "
                              "--enable-prompt-embeds.", 400, "prompt_embeds")
        for name, value in (("echo", request.echo), ("suffix", request.suffix),
                            ("use_beam_search", request.use_beam_search)):
            if value:
                raise OpenAIError(f"{name} is not supported with prompt_embeds (the prompt has no text or token "
                                  "ids).", 400, name)
        from pagedlm.engine.prompt_embeds import PromptEmbedsError, check_tensor, load_base64

        hidden = model_config.hf_config.hidden_size
        max_bytes = self.max_model_len * hidden * 4 + (64 << 10)  # float32 rows plus torch.save's framing
        tensors = []
        for payload in payloads if isinstance(payloads, list) else [payloads]:
            try:
                tensor = check_tensor(load_base64(payload, max_bytes), hidden)
            except PromptEmbedsError as e:
                raise OpenAIError(str(e), 400, "prompt_embeds") from e
            if request.truncate_prompt_tokens is not None:
                tensor = tensor[self.truncate(list(range(tensor.shape[0])), request)]
            tensors.append(tensor)
        return tensors

    async def _tokenize(self, prompt: str | list[int], request: CompletionRequest) -> tuple[str | None, list[int]]:
        """-> (text, token ids), cut to the request's truncate_prompt_tokens."""
        if isinstance(prompt, str):
            truncating = request.truncate_prompt_tokens is not None  # then a long text is cut, not refused
            try:
                token_ids = (await self.engine.tokenize(prompt, request.add_special_tokens, check_chars=not truncating)
                             if prompt else [])
            except ValueError as e:  # too long to be worth tokenizing
                raise to_openai_error(e) from e
            text: str | None = prompt
        else:
            text, token_ids = None, list(prompt)
        if not token_ids:
            raise OpenAIError("The prompt cannot be empty.", 400, "prompt")
        return text, self.truncate(token_ids, request)

    def _prompt_text(self, group: RequestGroup, index: int) -> str:
        text, token_ids = group.prompts[index]
        return text if text is not None else self.loop_tokenizer.decode(token_ids)

    # ------------------------------------------------------------------ full response

    async def _full(self, request: CompletionRequest, group: RequestGroup, request_id: str,
                    model: str) -> dict[str, Any]:
        finals: list[RequestOutput | None] = [None] * len(group.streams)
        async for index, output in group.merged():
            finals[index] = output
        usage = Usage()
        choices = []
        for index, output in enumerate(finals):
            if output is None or not output.finished:
                raise OpenAIError("the request was aborted before it finished", 500)
            usage.add_output(output, len(group.prompts[index][1]))
            for completion in output.outputs:
                choices.append(self._choice(request, group, index, output, completion))
        return {
            "id": request_id, "object": "text_completion", "created": group.created, "model": model,
            "choices": choices, "usage": usage.to_dict(), "system_fingerprint": None,
        }

    def _choice(self, request: CompletionRequest, group: RequestGroup, index: int, output: RequestOutput,
                completion: CompletionOutput) -> dict[str, Any]:
        prefix = self._echo_text(request, group, index)
        echo_only = _echo_only(request)
        logprobs = None
        if request.logprobs is not None:
            logprobs = self._echo_logprobs(output, self.as_token_ids(request)) if request.echo else _empty_logprobs()
            if not echo_only:
                _extend_logprobs(logprobs, completion.token_ids, completion.logprobs or [],
                                 _text_end(logprobs, prefix), as_token_ids=self.as_token_ids(request))
        choice = {
            "index": index * request.n + completion.index,
            "text": prefix if echo_only else prefix + completion.text,
            "logprobs": logprobs,
            "finish_reason": completion.finish_reason,
            "stop_reason": completion.stop_reason,
            "prompt_logprobs": prompt_logprobs_json(output) if request.prompt_logprobs is not None else None,
        }
        if request.return_token_ids:
            choice["prompt_token_ids"] = self._prompt_token_ids(request, group, index)
            choice["token_ids"] = list(completion.token_ids)
        return choice

    def _echo_text(self, request: CompletionRequest, group: RequestGroup, index: int) -> str:
        """What echo puts before the completion: the prompt's text; nothing when the token ids
        are returned (vLLM's: the prompt then comes as prompt_token_ids alone)."""
        return self._prompt_text(group, index) if request.echo and not request.return_token_ids else ""

    @staticmethod
    def _prompt_token_ids(request: CompletionRequest, group: RequestGroup, index: int) -> list[int] | None:
        """A prompt's token ids for return_token_ids; None for one given as embeddings (it has none)."""
        embeds = request.prompt_embeds
        num_embeds = len(embeds) if isinstance(embeds, list) else int(bool(embeds))
        return None if index < num_embeds else list(group.prompts[index][1])

    def _echo_logprobs(self, output: RequestOutput, as_token_ids: bool) -> dict[str, list]:
        logprobs = _empty_logprobs()
        prompt_lps: list = list(output.prompt_logprobs or [])
        prompt_lps += [None] * (len(output.prompt_token_ids) - len(prompt_lps))
        _extend_logprobs(logprobs, output.prompt_token_ids, prompt_lps, 0, self.loop_tokenizer, as_token_ids)
        return logprobs

    # ------------------------------------------------------------------ streaming

    async def _stream(self, request: CompletionRequest, group: RequestGroup, request_id: str,
                      model: str) -> AsyncIterator[str]:
        include_usage, continuous = stream_usage_flags(request, self.options.force_include_usage)
        head = {"id": request_id, "object": "text_completion", "created": group.created, "model": model}
        progress: dict[int, ChoiceProgress] = {}
        usage = Usage()
        # As vLLM's: a chunk's continuous usage is its prompt's tokens and its own choice's
        # tokens so far; the final usage chunk sums every prompt and every choice.
        generated: dict[int, int] = {}  # choice index -> tokens so far (outputs are deltas)
        async for index, output in group.merged():
            for completion in output.outputs:
                choice_index = index * request.n + completion.index
                generated[choice_index] = generated.get(choice_index, 0) + len(completion.token_ids)
                state = progress.setdefault(choice_index, ChoiceProgress())
                choice = self._stream_choice(request, group, index, output, completion, state, choice_index)
                if choice is not None:
                    chunk = {**head, "choices": [choice]}
                    if include_usage:
                        chunk["usage"] = partial_usage(len(group.prompts[index][1]), generated[choice_index]) \
                            if continuous else None
                    yield sse(chunk)
            usage.add_completion(output)
            if output.finished:
                usage.add_prompt(output, len(group.prompts[index][1]))
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage.to_dict()})

    def _stream_choice(self, request: CompletionRequest, group: RequestGroup, index: int, output: RequestOutput,
                       completion: CompletionOutput, state: ChoiceProgress, choice_index: int) -> dict | None:
        """The chunk for one choice's delta, or None when it has nothing new. Every step with new
        tokens is a chunk, even when their text is still held back (an incomplete character, a
        possible stop string), as vLLM streams: clients count chunks as tokens arrive."""
        if state.finished:
            return None
        echo_only = _echo_only(request)  # the generated token is not part of the answer
        delta = "" if echo_only else completion.text
        finishing = completion.finish_reason is not None
        echoing = request.echo and not state.started  # this chunk echoes the prompt
        prefix = self._echo_text(request, group, index) if echoing else ""
        new_ids, new_lps = ([], []) if echo_only else (completion.token_ids, completion.logprobs or [])
        if not delta and not finishing and not echoing and not new_ids:
            return None
        logprobs = None
        if request.logprobs is not None:
            logprobs = self._echo_logprobs(output, self.as_token_ids(request)) if echoing else _empty_logprobs()
            start = _text_end(logprobs, prefix) if echoing else state.num_chars
            _extend_logprobs(logprobs, new_ids, new_lps, start, as_token_ids=self.as_token_ids(request))
        choice = {
            "index": choice_index, "text": prefix + delta, "logprobs": logprobs,
            "finish_reason": completion.finish_reason, "stop_reason": completion.stop_reason,
        }
        if request.return_token_ids:
            if not state.started:
                choice["prompt_token_ids"] = self._prompt_token_ids(request, group, index)
            choice["token_ids"] = list(completion.token_ids)  # (echo alone: the one token generated, as vLLM)
        state.started = True
        state.num_chars += len(prefix) + len(delta)
        state.finished = finishing
        return choice


def _echo_only(request: CompletionRequest) -> bool:
    """echo with max_tokens 0: the answer is the prompt alone."""
    return request.echo and request.max_tokens == 0


def _text_end(logprobs: dict[str, list], prefix: str) -> int:
    """Where the completion's tokens start in the text: after the echoed prompt's text, or,
    when the prompt's tokens are listed without their text (return_token_ids), after them."""
    if prefix or not logprobs["tokens"]:
        return len(prefix)
    return logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])


def _empty_logprobs() -> dict[str, list]:
    return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}


def _extend_logprobs(logprobs: dict[str, list], token_ids: list[int], entries: list[dict[int, Logprob] | None],
                     text_offset: int, tokenizer: Any = None, as_token_ids: bool = False) -> None:
    """Append the legacy completions format: per token its text (or "token_id:N"), logprob,
    the top alternatives (the sampled token plus the top-k, as vLLM) and its offset in the text."""
    offset = text_offset
    for token_id, entry in zip(token_ids, entries):
        own = entry.get(token_id) if entry else None
        if as_token_ids or (own is not None and own.decoded_token is not None):
            token = logprob_token(token_id, own, as_token_ids)
        else:  # an echoed prompt token without logprobs
            token = tokenizer.decode([token_id]) if tokenizer is not None else ""
        logprobs["tokens"].append(token)
        logprobs["token_logprobs"].append(clamp_logprob(own.logprob) if own is not None else None)
        top = None
        if entry:
            top = {logprob_token(tid, lp, as_token_ids, str(tid)): clamp_logprob(lp.logprob) for tid, lp in entry.items()}
        logprobs["top_logprobs"].append(top)
        logprobs["text_offset"].append(offset)
        offset += len(token)


def prompt_logprobs_json(output: RequestOutput) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's extra ``prompt_logprobs``: per prompt position {token_id: {logprob, rank, decoded_token}}."""
    if output.prompt_logprobs is None:
        return None
    return [
        None if entry is None else {
            str(tid): {"logprob": clamp_logprob(lp.logprob), "rank": lp.rank, "decoded_token": lp.decoded_token}
            for tid, lp in entry.items()
        }
        for entry in output.prompt_logprobs
    ]
