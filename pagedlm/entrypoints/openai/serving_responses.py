"""POST /v1/responses (the Responses API) for what the chat endpoint covers: text, function
tools (none / auto / required / named) and structured output (``text.format``), with
reasoning split out by --reasoning-parser; non-streaming and streaming events.

A responses request becomes a chat request (instructions -> system message, input items ->
messages, function_call / function_call_output items -> assistant tool calls / tool
messages) and goes through the same template, constraints and ChoiceShaper as chat. Nothing
is stored: ``store: true`` is answered with ``store: false`` (vLLM's behaviour without a response
store) and ``previous_response_id`` is a 404; any field this server does not implement is a 400
naming it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator, Literal

from fastapi import Request
from fastapi.responses import Response
from pydantic import ConfigDict, Field, ValidationError

from pagedlm.entrypoints.openai.chat_utils import render_chat
from pagedlm.entrypoints.openai.errors import OpenAIError, from_validation_error
from pagedlm.entrypoints.openai.protocol import ChatCompletionRequest, OpenAIBaseModel
from pagedlm.entrypoints.openai.serving_chat import chat_logprobs
from pagedlm.entrypoints.openai.serving_common import OpenAIServing, RequestGroup
from pagedlm.entrypoints.openai.tool_calling import ChoiceShaper, add_tool_constraint, plan_tools
from pagedlm.outputs import RequestOutput


def _item_id(prefix: str) -> str:
    """OpenAI's (and vLLM's) ids: ``resp_<hex>``, ``msg_<hex>``, ``rs_<hex>``, ``fc_<hex>``."""
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponsesRequest(OpenAIBaseModel):
    model_config = ConfigDict(extra="allow")  # unknown fields are refused by name, not dropped

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    stream: bool | None = False
    store: bool | None = None
    metadata: dict[str, Any] | None = None
    user: str | None = None
    previous_response_id: str | None = None
    include: list[Literal[
        "code_interpreter_call.outputs", "computer_call_output.output.image_url", "file_search_call.results",
        "message.input_image.image_url", "message.output_text.logprobs", "reasoning.encrypted_content",
    ]] | None = None  # as vLLM: the others name outputs this server never makes (no built-in tools,
    # images or encrypted reasoning), so they add nothing; message.output_text.logprobs adds logprobs
    top_logprobs: int | None = Field(None, ge=0, le=20)
    reasoning: dict[str, Any] | None = None  # effort / enabled -> the template's enable_thinking
    truncation: Literal["auto", "disabled"] | None = "disabled"
    service_tier: Literal["auto", "default"] | None = None  # one tier here; flex/scale/priority are refused
    # vLLM extras, as on chat
    seed: int | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    logit_bias: dict[str, float] | None = None
    priority: int | None = None
    cache_salt: str | None = None
    request_id: str | None = None
    structured_outputs: dict[str, Any] | None = None
    vllm_xargs: dict[str, Any] | None = None  # to the custom logits processors, as on chat
    # vLLM's fields that ask for a response store or its messages: their defaults are accepted
    background: bool | None = None  # True: refused (a background response needs a store)
    enable_response_messages: bool | None = None  # True: refused (no harmony messages)
    prompt_cache_key: str | None = None  # accepted and ignored, as vLLM documents it

    def output_logprobs(self) -> bool:
        return "message.output_text.logprobs" in (self.include or [])


def _refuse_unsupported(req: ResponsesRequest) -> None:
    extra = sorted(k for k, v in (req.model_extra or {}).items() if v is not None)
    if extra:
        raise OpenAIError(f"/v1/responses does not support {extra}", 400, extra[0])
    for name, why in (("background", "a background response needs a response store, and pagedlm keeps none"),
                      ("enable_response_messages", "responses carry no harmony messages here")):
        if getattr(req, name):
            raise OpenAIError(f"/v1/responses does not support {name}: true ({why}).", 400, name)
    if req.previous_response_id is not None:  # as vLLM without a store: no such response
        raise OpenAIError(f"Response with id '{req.previous_response_id}' not found.", 404, "previous_response_id")
    text_extra = sorted(k for k, v in (req.text or {}).items() if k != "format" and v is not None)
    if text_extra:
        raise OpenAIError(f"/v1/responses does not support text.{text_extra[0]} (only text.format)", 400,
                          f"text.{text_extra[0]}")


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("input_text", "output_text", "text"):
                texts.append(str(part.get("text", "")))
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise OpenAIError(f"{where}: content part type {kind!r} is not supported; only text", 400, where)
        return "\n".join(texts)
    raise OpenAIError(f"{where}: content must be text or a list of text parts", 400, where)


def to_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    if isinstance(req.input, str):
        return messages + [{"role": "user", "content": req.input}]
    reasoning: list[str] = []  # a replayed reasoning item's text, for the assistant turn after it
    for i, item in enumerate(req.input):
        kind = item.get("type", "message")
        if kind == "message":
            messages.append({"role": item.get("role", "user"), "content": _text_of(item.get("content"), f"input[{i}]")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments", "{}")}}
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "reasoning":  # a previous response's output, sent back with the conversation
            parts = item.get("content") or item.get("summary")
            if isinstance(parts, list):
                reasoning.extend(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str))
            continue
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                             "content": _text_of(item.get("output", ""), f"input[{i}].output")})
        else:
            raise OpenAIError(f"input[{i}]: item type {kind!r} is not supported", 400, f"input[{i}]")
        if reasoning and messages[-1]["role"] == "assistant":
            messages[-1]["reasoning_content"] = "\n".join(reasoning)
        reasoning = []
    return messages


def to_chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    tools = None
    if req.tools is not None:
        tools = []
        for i, tool in enumerate(req.tools):
            if tool.get("type") != "function":
                raise OpenAIError(f"tools[{i}]: only function tools are supported", 400, f"tools[{i}]")
            tools.append({"type": "function", "function": {k: v for k, v in tool.items() if k != "type"}})
    tool_choice = req.tool_choice
    if isinstance(tool_choice, dict) and "name" in tool_choice:  # {"type": "function", "name": ...}
        tool_choice = {"type": "function", "function": {"name": tool_choice["name"]}}
    fmt = (req.text or {}).get("format")
    response_format = None
    if fmt is not None and not isinstance(fmt, dict):
        raise OpenAIError("text.format must be an object such as {'type': 'json_object'}", 400, "text.format")
    if fmt is not None:
        _check_text_format_type(fmt.get("type"))
        response_format = {"type": fmt.get("type")}
        if fmt.get("type") == "json_schema":
            response_format["json_schema"] = {"name": fmt.get("name"), "schema": fmt.get("schema"),
                                              "strict": fmt.get("strict")}
    if response_format is not None and req.structured_outputs is not None:
        raise OpenAIError("Cannot specify both structured_outputs and text.format", 400, "structured_outputs")
    extras = {name: getattr(req, name) for name in _CHAT_EXTRAS if getattr(req, name) is not None}
    if req.output_logprobs():
        extras.update(logprobs=True, top_logprobs=req.top_logprobs or 0)
    if req.truncation == "auto":  # as vLLM: keep the end of a prompt longer than the context
        extras["truncate_prompt_tokens"] = -1
    template_kwargs = reasoning_template_kwargs(req.reasoning)
    if template_kwargs:
        extras["chat_template_kwargs"] = template_kwargs
    return ChatCompletionRequest.model_validate({
        "model": req.model, "messages": to_messages(req), "max_tokens": req.max_output_tokens,
        "temperature": req.temperature, "top_p": req.top_p, "tools": tools, "tool_choice": tool_choice,
        "parallel_tool_calls": req.parallel_tool_calls, "response_format": response_format, **extras,
    })


TEXT_FORMAT_TYPES = ("text", "json_object", "json_schema")


def _check_text_format_type(kind: Any) -> None:
    """vLLM's ResponsesRequest types ``text`` as OpenAI's ResponseTextConfig, whose ``format``
    is text, json_object or json_schema only: any other type (structural_tag included) is a 400
    there, so it is here, with a message that says where a structural tag does go."""
    if kind in TEXT_FORMAT_TYPES:
        return
    hint = (" /v1/responses takes a structural tag as structured_outputs: {\"structural_tag\": \"<the tag as "
            "JSON text>\"} (or use response_format on /v1/chat/completions)." if kind == "structural_tag" else "")
    raise OpenAIError(f"text.format type {kind!r} is not supported: as in vLLM, it must be one of "
                      f"{', '.join(repr(k) for k in TEXT_FORMAT_TYPES)}.{hint}", 400, "text.format.type")


_CHAT_EXTRAS = ("seed", "top_k", "repetition_penalty", "stop", "ignore_eos", "skip_special_tokens",
                "include_stop_str_in_output", "logit_bias", "priority", "cache_salt", "request_id",
                "structured_outputs", "vllm_xargs")


def reasoning_template_kwargs(reasoning: dict[str, Any] | None) -> dict[str, Any]:
    """``reasoning`` -> chat template kwargs, as vLLM: effort "none" (or enabled: false) turns
    thinking off, any other effort (or enabled: true) turns it on; the effort goes along as
    ``reasoning_effort`` for templates that read it."""
    if not reasoning:
        return {}
    enabled, effort = reasoning.get("enabled"), reasoning.get("effort")
    if enabled is False:
        effort = "none"
    elif effort == "minimal":
        effort = "low"
    elif effort is None and enabled is True:
        effort = "medium"
    if effort is None:
        return {}
    if effort not in ("none", "low", "medium", "high"):
        raise OpenAIError(f"reasoning.effort must be one of none, minimal, low, medium, high; got {effort!r}", 400,
                          "reasoning.effort")
    return {"enable_thinking": effort != "none", "reasoning_effort": effort}


class OpenAIServingResponses(OpenAIServing):
    async def create_response(self, req: ResponsesRequest, raw: Request) -> Response:
        self.require_tokenizer("The Responses API (its chat template renders text)", "input")
        _refuse_unsupported(req)
        try:
            chat = to_chat_request(req)
        except ValidationError as e:
            raise from_validation_error(e) from e
        self.check_request(chat)
        plan = plan_tools(chat.tools, chat.tool_choice, chat.parallel_tool_calls, self.options)
        self.check_logprobs("top_logprobs", chat.top_logprobs)
        text, token_ids = await self.engine.run_in_tokenizer(
            render_chat, self.tokenizer, chat.messages, True, False, chat.tools, chat.chat_template_kwargs, False,
            self.options.chat_template_content_format)
        token_ids = self.truncate(token_ids, chat)
        self.check_length(len(token_ids), req.max_output_tokens, what="input")
        params = self.make_params(chat, chat.num_logprobs(), req.max_output_tokens)
        add_tool_constraint(params, plan, self.options)
        response_id = req.request_id or _item_id("resp")  # vLLM: the request_id is the response's id
        group = await self.start(response_id, [(text, token_ids)], params, bool(req.stream), chat)
        shaper = ChoiceShaper(plan, self.options, text)
        base = self._base(req, response_id, self.model_name(chat))
        num_top = chat.top_logprobs if chat.logprobs else None
        return await self.respond(raw, group, bool(req.stream),
                                  lambda g: self._stream(g, shaper, base, num_top),
                                  lambda g: self._full(g, shaper, base, num_top))

    @staticmethod
    def _base(req: ResponsesRequest, response_id: str, model: str) -> dict[str, Any]:
        return {
            "id": response_id, "object": "response", "created_at": int(time.time()), "model": model,
            "status": "in_progress", "output": [], "error": None, "incomplete_details": None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "temperature": req.temperature, "top_p": req.top_p, "tools": req.tools or [],
            "tool_choice": req.tool_choice or "auto", "top_logprobs": req.top_logprobs,
            "parallel_tool_calls": req.parallel_tool_calls is not False, "text": req.text or {"format": {"type": "text"}},
            "metadata": req.metadata or {}, "previous_response_id": None, "reasoning": req.reasoning, "store": False,
            "truncation": req.truncation or "disabled", "user": req.user, "usage": None,
        }

    def _logprobs(self, completion: Any, num_top: int | None) -> list[dict[str, Any]]:
        """Output-text logprobs (include: message.output_text.logprobs) in the chat format."""
        if num_top is None:
            return []
        return chat_logprobs(completion.token_ids, completion.logprobs or [], num_top if num_top != -1 else None,
                             self.options.return_tokens_as_token_ids)

    async def _full(self, group: RequestGroup, shaper: ChoiceShaper, base: dict[str, Any],
                    num_top: int | None = None) -> dict[str, Any]:
        final: RequestOutput | None = None
        async for _, output in group.merged():
            final = output
        if final is None or not final.finished:
            raise OpenAIError("the request was aborted before it finished", 500)
        completion = final.outputs[0]
        return _completed(base, final, output_items(shaper.message(completion.text),
                                                    logprobs=self._logprobs(completion, num_top)))

    async def _stream(self, group: RequestGroup, shaper: ChoiceShaper, base: dict[str, Any],
                      num_top: int | None = None) -> AsyncIterator[str]:
        events = ResponseEvents(base)
        yield events.emit("response.created", response=base)
        yield events.emit("response.in_progress", response=base)
        final: RequestOutput | None = None
        num_output_tokens = 0  # streamed outputs are deltas
        logprobs: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        async for _, output in group.merged():
            final = output
            completion = output.outputs[0]
            num_output_tokens += len(completion.token_ids)
            step_logprobs = self._logprobs(completion, num_top)
            logprobs += step_logprobs
            pending += step_logprobs  # a token whose text is held back goes with the next text delta
            delta = shaper.feed(completion.text, completion.finish_reason is not None)
            for chunk in events.on_delta(delta, [_delta_logprob(lp) for lp in pending]):
                yield chunk
            if delta.get("content"):
                pending = []
        if final is None:
            return
        items = output_items(shaper.message(shaper.text), events.item_ids, logprobs)
        for chunk in events.close(items):
            yield chunk
        yield events.emit("response.completed", response=_completed(base, final, items, num_output_tokens))


def _completed(base: dict[str, Any], final: RequestOutput, items: list[dict[str, Any]],
               num_output: int | None = None) -> dict[str, Any]:
    completion = final.outputs[0]
    num_output = len(completion.token_ids) if num_output is None else num_output
    num_input = len(final.prompt_token_ids)
    incomplete = completion.finish_reason == "length"
    return {**base, "status": "incomplete" if incomplete else "completed", "output": items,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "usage": {"input_tokens": num_input, "output_tokens": num_output, "total_tokens": num_input + num_output,
                      "input_tokens_details": {"cached_tokens": final.num_cached_tokens},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def _delta_logprob(lp: dict[str, Any]) -> dict[str, Any]:
    """A streamed text delta's logprob entry: no bytes (OpenAI's delta-event shape)."""
    return {"token": lp["token"], "logprob": lp["logprob"],
            "top_logprobs": [{"token": t["token"], "logprob": t["logprob"]} for t in lp["top_logprobs"]]}


def output_items(message: dict[str, Any], ids: dict[str, str] | None = None,
                 logprobs: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A chat message -> Responses output items: reasoning, message, function calls (in order)."""
    ids = ids if ids is not None else {}
    items: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        items.append({"type": "reasoning", "id": ids.setdefault("reasoning", _item_id("rs")), "summary": [],
                      "content": [{"type": "reasoning_text", "text": message["reasoning_content"]}],
                      "status": "completed"})
    if message.get("content"):
        items.append({"type": "message", "id": ids.setdefault("message", _item_id("msg")), "role": "assistant",
                      "status": "completed", "content": [{"type": "output_text", "text": message["content"],
                                                          "annotations": [], "logprobs": logprobs or []}]})
    for call in message.get("tool_calls") or []:
        items.append({"type": "function_call", "id": ids.setdefault(call["id"], _item_id("fc")),
                      "call_id": call["id"], "name": call["function"]["name"],
                      "arguments": call["function"]["arguments"], "status": "completed"})
    return items


class ResponseEvents:
    """Streaming events of one response: items open as their first delta arrives and close at
    the end, every event numbered (sequence_number)."""

    def __init__(self, base: dict[str, Any]) -> None:
        self.base = base
        self.seq = 0
        self.item_ids: dict[str, str] = {}  # key (reasoning | message | call id) -> item id
        self.output_index: dict[str, int] = {}
        self.call_keys: dict[int, str] = {}  # tool call index -> its call id

    def emit(self, kind: str, **fields: Any) -> str:
        event = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(event, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def _open(self, key: str, item: dict[str, Any]) -> list[str]:
        if key in self.output_index:
            return []
        self.output_index[key] = len(self.output_index)
        item = {**item, "id": self.item_ids.setdefault(key, _item_id(item["id"])), "status": "in_progress"}
        out = [self.emit("response.output_item.added", output_index=self.output_index[key], item=item)]
        if key == "message":
            out.append(self.emit("response.content_part.added", item_id=item["id"], output_index=self.output_index[key],
                                 content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
        return out

    def _where(self, key: str) -> dict[str, Any]:
        return {"item_id": self.item_ids[key], "output_index": self.output_index[key]}

    def on_delta(self, delta: dict[str, Any], logprobs: list[dict[str, Any]] | None = None) -> list[str]:
        out: list[str] = []
        if delta.get("reasoning_content"):
            out += self._open("reasoning", {"type": "reasoning", "id": "rs", "summary": []})
            out.append(self.emit("response.reasoning_text.delta", **self._where("reasoning"), content_index=0,
                                 delta=delta["reasoning_content"]))
        if delta.get("content"):
            out += self._open("message", {"type": "message", "id": "msg", "role": "assistant", "content": []})
            out.append(self.emit("response.output_text.delta", **self._where("message"), content_index=0,
                                 delta=delta["content"], logprobs=logprobs or []))
        for entry in delta.get("tool_calls", []):
            if "id" in entry:
                key = self.call_keys.setdefault(entry["index"], entry["id"])
                out += self._open(key, {"type": "function_call", "id": "fc", "call_id": entry["id"],
                                        "name": entry["function"]["name"], "arguments": ""})
            key = self.call_keys[entry["index"]]
            if entry["function"].get("arguments"):
                out.append(self.emit("response.function_call_arguments.delta", **self._where(key),
                                     delta=entry["function"]["arguments"]))
        return out

    def close(self, items: list[dict[str, Any]]) -> list[str]:
        out: list[str] = []
        for item in items:
            key = {"reasoning": "reasoning", "message": "message"}.get(item["type"]) or item["call_id"]
            out += self._open(key, {**item, "id": item["type"][:2]})
            where = self._where(key)
            if item["type"] == "reasoning":
                out.append(self.emit("response.reasoning_text.done", **where, content_index=0,
                                     text=item["content"][0]["text"]))
            elif item["type"] == "message":
                part = item["content"][0]
                out.append(self.emit("response.output_text.done", **where, content_index=0, text=part["text"],
                                     logprobs=[]))
                out.append(self.emit("response.content_part.done", **where, content_index=0, part=part))
            else:
                out.append(self.emit("response.function_call_arguments.done", **where, name=item["name"],
                                     arguments=item["arguments"]))
            out.append(self.emit("response.output_item.done", output_index=where["output_index"], item=item))
        return out
