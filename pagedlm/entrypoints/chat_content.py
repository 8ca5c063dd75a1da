"""How a chat message's content reaches the chat template: vLLM's two content formats.

``string``: the text parts joined with newlines. ``openai``: a list of ``{"type": "text",
"text": ...}`` parts (a plain string becomes one part). ``auto`` picks ``openai`` for a
template that loops over a message's content and ``string`` otherwise. Only text parts are
taken: an image or audio part would be dropped by the template, so it is refused. Each
message carries the keys vLLM's ``parse_chat_messages`` gives the template. Shared by
``LLM.chat`` and the server (which turns the ValueError into a 400).
"""

from __future__ import annotations

import functools
import json
from typing import Any

CONTENT_FORMATS = ("auto", "string", "openai")
# vLLM's text-like content part types -> the key holding their text.
_TEXT_PART_KEYS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal",
                   "thinking": "thinking"}
_MEDIA_PART_KEYS = ("image_url", "image_pil", "image_embeds", "audio_embeds", "prompt_embeds", "audio_url",
                    "input_audio", "video_url", "input_image")
NO_TEMPLATE_MESSAGE = ("As of transformers v4.44, default chat template is no longer allowed, so you must provide "
                       "a chat template if the tokenizer does not define one.")


def content_parts(content: Any, index: int) -> list[dict[str, str]]:
    """The message's content as vLLM parses it, text-like parts only: ``{"type": "text",
    "text": ...}`` (``{"type": "tool_reference", "name": ...}`` is kept as it is). A plain
    string is one text part, None none; a text part without text is skipped; a media part
    (image, audio, video) is refused: this engine serves text models."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    parts: list[dict[str, str]] = []
    for part in content:
        if isinstance(part, str):
            parts.append({"type": "text", "text": part})
            continue
        part_type = part.get("type") if isinstance(part, dict) else type(part).__name__
        if part_type in _TEXT_PART_KEYS:
            text = part.get(_TEXT_PART_KEYS[part_type])
            if text is not None:
                parts.append({"type": "text", "text": str(text)})
        elif part_type == "tool_reference":
            parts.append({"type": "tool_reference", "name": part.get("name")})
        elif part_type in _MEDIA_PART_KEYS or (part_type is None and any(k in part for k in _MEDIA_PART_KEYS)):
            shown = part_type or next(k for k in _MEDIA_PART_KEYS if k in part)
            raise ValueError(f"messages[{index}].content: content part type {shown!r} is not supported; "
                             "only text parts are (pagedlm serves text only)")
        elif part_type is None:
            raise ValueError(f"messages[{index}].content: Missing 'type' field in multimodal part.")
        else:
            supported = sorted([*_TEXT_PART_KEYS, "tool_reference"])
            raise ValueError(f"messages[{index}].content: Unsupported chat content part type: {part_type!r}. "
                             f"Supported types: {', '.join(supported)}.")
    return parts


def content_texts(content: Any, index: int) -> list[str] | None:
    """The text of each content part (a string is one part; None stays None)."""
    if content is None:
        return None
    return [p.get("text") or p.get("name") or "" for p in content_parts(content, index)]


def template_content(content: Any, index: int, content_format: str) -> str | list[dict[str, str]]:
    """A message's content as the template gets it, in a resolved content format."""
    parts = content_parts(content, index)
    if content_format == "openai":
        return parts
    return "\n".join(p.get("text") or p.get("name") or "" for p in parts)


def template_message(message: dict[str, Any], index: int, content_format: str) -> dict[str, Any]:
    """One message as the chat template gets it, as vLLM's ``parse_chat_messages`` builds it:
    role and content, then only the keys that role carries (an assistant's tool calls and
    reasoning, a tool result's ``tool_call_id``), a string ``name`` and ``task``, a developer
    message's ``tools``. A tool result's text parts are one string in either content format
    (templates render tool results as strings)."""
    role = message.get("role")
    content = template_content(message.get("content"), index, content_format)
    if role == "tool" and isinstance(content, list) and all(p.get("type") == "text" for p in content):
        content = "\n".join(p["text"] for p in content)
    out: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant":
        if message.get("tool_calls") is not None:
            out["tool_calls"] = list(message["tool_calls"])
        reasoning = message.get("reasoning")
        if reasoning is None:
            reasoning = message.get("reasoning_content")
        if reasoning is not None:
            out["reasoning"] = out["reasoning_content"] = reasoning
    elif role == "tool" and "tool_call_id" in message:
        out["tool_call_id"] = message["tool_call_id"]
    for key in ("name", "task"):
        if isinstance(message.get(key), str):
            out[key] = message[key]
    if role == "developer":
        out["tools"] = message.get("tools")
    return template_tool_calls(out, index)


def harmony_thinking(conversation: list[dict[str, Any]], template: str | None) -> list[dict[str, Any]]:
    """gpt-oss's chat template renders an assistant's earlier reasoning (its ``analysis``
    message, kept before a tool call) from ``message.thinking``; vLLM, which renders gpt-oss
    with harmony itself, takes it from ``reasoning`` / ``reasoning_content``. So for a harmony
    template (one that writes ``<|channel|>`` and reads ``thinking``) an assistant message's
    reasoning is also its ``thinking``; other templates get the messages unchanged."""
    if not template or "<|channel|>" not in template or "thinking" not in template:
        return conversation
    return [{**m, "thinking": m["reasoning"]}
            if m.get("role") == "assistant" and m.get("reasoning") is not None and "thinking" not in m else m
            for m in conversation]


def template_tool_calls(message: dict[str, Any], index: int) -> dict[str, Any]:
    """The message as the template gets it (a copy where it changes). A tool call carries its
    arguments as JSON text; chat templates (Qwen, Hermes, Llama) use them as a mapping, so
    they get the parsed object, as vLLM's; arguments that are not a JSON text, object or
    array (empty, null, malformed JSON a model produced) are an empty object, as in vLLM. An
    empty ``tool_calls`` list (a reply without calls, sent back as history) is dropped, as
    vLLM does: templates that test ``'tool_calls' in message`` (Llama 3.x) would take it for
    a call turn and fail."""
    calls = message.get("tool_calls")
    if calls == []:
        return {k: v for k, v in message.items() if k != "tool_calls"}
    if not isinstance(calls, list):
        return message
    parsed = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            call = {**call, "function": {**function, "arguments": _parsed_arguments(function.get("arguments"))}}
        parsed.append(call)
    return {**message, "tool_calls": parsed}


def _parsed_arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return {}
    return arguments if isinstance(arguments, (dict, list)) else {}


def resolve_content_format(requested: str, template: Any) -> str:
    if requested not in CONTENT_FORMATS:
        raise ValueError(f"chat template content format must be one of {CONTENT_FORMATS}, got {requested!r}")
    if requested != "auto":
        return requested
    if isinstance(template, dict):  # named templates: the default one renders chats
        template = template.get("default")
    return detect_content_format(template if isinstance(template, str) else "")


@functools.lru_cache(maxsize=16)
def detect_content_format(template: str) -> str:
    """vLLM's 'auto': 'openai' when the template loops over a message's content (``{% for part
    in message['content'] %}`` or ``message.content``, filters allowed), else 'string' (also
    for a template Jinja cannot parse here)."""
    import jinja2
    from jinja2 import nodes

    def is_content(node: Any) -> bool:
        while isinstance(node, nodes.Filter):
            node = node.node
        if isinstance(node, nodes.Getattr):
            return node.attr == "content"
        return isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and node.arg.value == "content"

    try:
        ast = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(template)
    except jinja2.TemplateError:
        return "string"
    return "openai" if any(is_content(loop.iter) for loop in ast.find_all(nodes.For)) else "string"
