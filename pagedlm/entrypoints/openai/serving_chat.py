"""POST /v1/chat/completions: messages -> chat template -> engine request -> chat.completion
JSON or chat.completion.chunk SSE (first chunk per choice carries role "assistant")."""

from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import Response

from pagedlm.entrypoints.openai.chat_utils import message_text, render_chat
from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.entrypoints.openai.protocol import ChatCompletionRequest
from pagedlm.entrypoints.openai.tool_calling import ChoiceShaper, add_tool_constraint, plan_tools
from pagedlm.entrypoints.openai.serving_common import (
    ChoiceProgress,
    OpenAIServing,
    RequestGroup,
    MIN_LOGPROB,
    Usage,
    clamp_logprob,
    logprob_token,
    partial_usage,
    sse,
    stream_usage_flags,
    to_openai_error,
)
from pagedlm.entrypoints.openai.serving_completion import prompt_logprobs_json
from pagedlm.outputs import CompletionOutput, Logprob, RequestOutput


class OpenAIServingChat(OpenAIServing):

    async def create_chat_completion(self, request: ChatCompletionRequest, raw: Request) -> Response:
        self.require_tokenizer("Chat (its template renders text)", "messages")
        self.check_request(request)
        self._check_chat_features(request)
        plan = plan_tools(request.tools, request.tool_choice, request.parallel_tool_calls, self.options)
        self.check_logprobs("top_logprobs", request.top_logprobs)
        max_tokens = request.requested_max_tokens()
        params = self.make_params(request, request.num_logprobs(), max_tokens)
        add_tool_constraint(params, plan, self.options)
        text, token_ids = await self._render(request)
        if not token_ids:
            raise OpenAIError("The chat template rendered an empty prompt.", 400, "messages")
        token_ids = self.truncate(token_ids, request)
        self.check_length(len(token_ids), max_tokens, what="messages")
        request_id = self.response_id("chatcmpl", request, raw)
        group = await self.start(request_id, [(text, token_ids)], params, bool(request.stream), request)
        model = self.model_name(request)
        shapers = [ChoiceShaper(plan, self.options, text, request.include_reasoning) for _ in range(request.n)]
        return await self.respond(
            raw, group, bool(request.stream),
            lambda g: self._stream(request, g, request_id, model, shapers),
            lambda g: self._full(request, g, request_id, model, shapers),
        )

    async def _render(self, request: ChatCompletionRequest) -> tuple[str, list[int]]:
        """The chat template, on the tokenizer thread; text too long to be worth rendering
        is refused first."""
        num_chars = sum(len(message_text(m, i) or "") for i, m in enumerate(request.messages))
        try:
            if request.truncate_prompt_tokens is None:  # else a long prompt is cut, not refused
                self.engine.input_processor.check_num_chars(num_chars)
        except ValueError as e:
            raise to_openai_error(e) from e
        return await self.engine.run_in_tokenizer(
            render_chat, self.tokenizer, request.messages, request.add_generation_prompt,
            request.continue_final_message, request.tools, request.template_kwargs(), request.add_special_tokens,
            self.options.chat_template_content_format, request.documents)

    @staticmethod
    def _check_chat_features(request: ChatCompletionRequest) -> None:
        if request.chat_template is not None:
            raise OpenAIError("chat_template in the request is not allowed; start the server with "
                              "--chat-template instead.", 400, "chat_template")

    # ------------------------------------------------------------------ full response

    async def _full(self, request: ChatCompletionRequest, group: RequestGroup, request_id: str,
                    model: str, shapers: list[ChoiceShaper]) -> dict[str, Any]:
        final: RequestOutput | None = None
        async for _, output in group.merged():
            final = output
        if final is None or not final.finished:
            raise OpenAIError("the request was aborted before it finished", 500)
        usage = Usage()
        usage.add_output(final)
        role = chat_role(request, self.options.response_role)
        echo = echo_text(request, role)
        choices = [
            {
                "index": c.index,
                "message": _with_echo(shapers[c.index].message(c.text), role, echo),
                "logprobs": self._logprobs(request, c.token_ids, c.logprobs),
                "finish_reason": shapers[c.index].finish_reason(c.finish_reason, c.text),
                "stop_reason": c.stop_reason,
                **({"token_ids": list(c.token_ids)} if request.return_token_ids else {}),
            }
            for c in final.outputs
        ]
        return {
            "id": request_id, "object": "chat.completion", "created": group.created, "model": model,
            "choices": choices, "usage": usage.to_dict(), "system_fingerprint": None,
            # vLLM's extras, at the top level for chat
            "prompt_logprobs": prompt_logprobs_json(final) if request.prompt_logprobs is not None else None,
            **_prompt_extras(request, group),
        }

    def _logprobs(self, request: ChatCompletionRequest, token_ids: list[int],
                  entries: list[dict[int, Logprob]] | None) -> dict[str, Any] | None:
        if not request.logprobs:
            return None
        content = chat_logprobs(token_ids, entries or [], request.num_top_logprobs(), self.as_token_ids(request))
        return {"content": content, "refusal": None}

    # ------------------------------------------------------------------ streaming

    async def _stream(self, request: ChatCompletionRequest, group: RequestGroup, request_id: str,
                      model: str, shapers: list[ChoiceShaper]) -> AsyncIterator[str]:
        include_usage, continuous = stream_usage_flags(request, self.options.force_include_usage)
        head = {"id": request_id, "object": "chat.completion.chunk", "created": group.created, "model": model}
        prompt_usage = {"prompt_tokens": len(group.prompts[0][1]), "completion_tokens": 0,
                        "total_tokens": len(group.prompts[0][1])}
        extra = {"usage": prompt_usage if continuous else None} if include_usage else {}
        # The role goes first, for every choice, before any token is generated (as vLLM).
        role = chat_role(request, self.options.response_role)
        echo = echo_text(request, role)
        prompt_extras = _prompt_extras(request, group)  # with each choice's first chunk, as vLLM's
        for index in range(request.n):
            first = {"index": index, "delta": {"role": role, "content": ""}, "logprobs": None,
                     "finish_reason": None}
            yield sse({**head, "choices": [first], **extra, **prompt_extras})
            if echo:
                yield sse({**head, "choices": [{"index": index, "delta": {"content": echo}, "logprobs": None,
                                                "finish_reason": None}], **extra})
        progress = [ChoiceProgress(started=True) for _ in range(request.n)]
        usage = Usage()
        # As vLLM's: a chunk's continuous usage counts its own choice's tokens so far (held
        # ones included); the final usage chunk sums every choice.
        num_generated = [0] * request.n  # outputs are deltas
        async for _, output in group.merged():
            for completion in output.outputs:
                num_generated[completion.index] += len(completion.token_ids)
                choice = self._stream_choice(request, completion, progress[completion.index],
                                             shapers[completion.index])
                if choice is not None:
                    if continuous:
                        extra = {"usage": partial_usage(len(group.prompts[0][1]), num_generated[completion.index])}
                    yield sse({**head, "choices": [choice], **extra})
            usage.add_completion(output)
            if output.finished:
                usage.add_prompt(output)
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage.to_dict()})

    def _stream_choice(self, request: ChatCompletionRequest, completion: CompletionOutput,
                       state: ChoiceProgress, shaper: ChoiceShaper) -> dict[str, Any] | None:
        if state.finished:
            return None
        finishing = completion.finish_reason is not None
        if not completion.text and not finishing and not completion.token_ids:
            return None
        new_ids = state.held_token_ids + list(completion.token_ids)
        new_lps = state.held_logprobs + list(completion.logprobs or [])
        state.num_chars += len(completion.text)
        if shaper.plain:
            delta = completion.text
            message = {"content": delta} if delta or not finishing else {}  # tokens without text yet: ""
        else:  # reasoning / tool calls: the shaper splits the text so far
            message = shaper.feed(completion.text, finishing)
            if not message and not finishing:
                # As vLLM: no chunk while the parsers hold the text back (a possible tool call
                # or reasoning marker); those tokens' logprobs go with the next chunk.
                state.held_token_ids, state.held_logprobs = new_ids, new_lps
                return None
        state.held_token_ids, state.held_logprobs = [], []
        state.finished = finishing
        return {
            "index": completion.index,
            "delta": message,
            "logprobs": self._logprobs(request, new_ids, new_lps),
            "finish_reason": shaper.finish_reason(completion.finish_reason, shaper.text) if finishing else None,
            "stop_reason": completion.stop_reason,
            **({"token_ids": new_ids} if request.return_token_ids else {}),
        }


def _prompt_extras(request: ChatCompletionRequest, group: RequestGroup) -> dict[str, Any]:
    """vLLM's top-level extras about the prompt: its token ids (return_token_ids) and the chat
    template's rendered text (return_prompt_text)."""
    text, token_ids = group.prompts[0]
    return {**({"prompt_token_ids": list(token_ids)} if request.return_token_ids else {}),
            **({"prompt_text": text} if request.return_prompt_text else {})}


def _with_echo(message: dict[str, Any], role: str, echo: str) -> dict[str, Any]:
    """The reply's message, with its role and (for chat ``echo``) the echoed text first."""
    message["role"] = role
    if echo:
        message["content"] = echo + (message.get("content") or "")
    return message


def chat_role(request: ChatCompletionRequest, response_role: str = "assistant") -> str:
    """vLLM: the reply has --response-role after a generation prompt, else it continues the last
    message's role."""
    return response_role if request.add_generation_prompt else request.messages[-1].role


def echo_text(request: ChatCompletionRequest, role: str) -> str:
    """vLLM's chat ``echo``: the reply starts with the last message's content when that
    message has the reply's role (e.g. an assistant message being continued), its text parts
    joined with newlines as the template got them."""
    last = request.messages[-1]
    if not request.echo or last.role != role:
        return ""
    return message_text(last, len(request.messages) - 1) or ""


def chat_logprobs(token_ids: list[int], entries: list[dict[int, Logprob]], num_top: int | None,
                  as_token_ids: bool = False) -> list[dict[str, Any]]:
    """OpenAI chat format: per token its text (or "token_id:N"), logprob, UTF-8 bytes and the
    ``num_top`` most likely alternatives (by rank, so the sampled token appears only if it is
    among them; None: all of them, for top_logprobs -1)."""
    content = []
    for token_id, entry in zip(token_ids, entries):
        own = entry.get(token_id)
        token = logprob_token(token_id, own, as_token_ids)
        ranked = sorted(entry.items(), key=lambda item: item[1].rank if item[1].rank is not None else 1 << 62)
        content.append({
            "token": token,
            "logprob": clamp_logprob(own.logprob) if own is not None else MIN_LOGPROB,
            "bytes": list(token.encode("utf-8")),
            "top_logprobs": [_top_entry(logprob_token(tid, lp, as_token_ids), lp) for tid, lp in ranked[:num_top]],
        })
    return content


def _top_entry(token: str, lp: Logprob) -> dict[str, Any]:
    return {"token": token, "logprob": clamp_logprob(lp.logprob), "bytes": list(token.encode("utf-8"))}
