"""How a chat message's content reaches the chat template: vLLM's two content formats.

``string``: the text parts joined with newlines. ``openai``: a list of ``{"type": "text",
"text": ...}`` parts (a plain string becomes one part). ``auto`` picks ``openai`` for a
template that loops over a message's content and ``string`` otherwise. Only text parts are
taken: an image or audio part would be dropped by the template, so it is refused. Shared by
``LLM.chat`` and the server (which turns the ValueError into a 400).
"""

from __future__ import annotations

import functools
import json
from typing import Any

CONTENT_FORMATS = ("auto", "string", "openai")


def content_texts(content: Any, index: int) -> list[str] | None:
    """The text of each content part (a string is one part; None stays None)."""
    if content is None or isinstance(content, str):
        return None if content is None else [content]
    texts: list[str] = []
    for part in content:
        part_type = part.get("type") if isinstance(part, dict) else type(part).__name__
        if part_type in ("text", "input_text") and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part_type == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise ValueError(f"messages[{index}].content: content part type {part_type!r} is not supported; "
                             "only text parts are (pagedlm serves text only)")
    return texts


def template_content(content: Any, index: int, content_format: str) -> str | list[dict[str, str]]:
    """A message's content as the template gets it, in a resolved content format."""
    texts = content_texts(content, index) or []
    if content_format == "openai":
        return [{"type": "text", "text": t} for t in texts]
    return "\n".join(texts)


def template_tool_calls(message: dict[str, Any], index: int) -> dict[str, Any]:
    """The message as the template gets it (a copy where it changes). A tool call carries its
    arguments as JSON text; chat templates (Qwen, Hermes, Llama) use them as a mapping, so
    they get the parsed object, as vLLM's; empty or null arguments (a call without
    parameters) are an empty object. An empty ``tool_calls`` list (a reply without calls,
    sent back as history) is dropped, as vLLM does: templates that test ``'tool_calls' in
    message`` (Llama 3.x) would take it for a call turn and fail."""
    calls = message.get("tool_calls")
    if calls == []:
        return {k: v for k, v in message.items() if k != "tool_calls"}
    if not isinstance(calls, list):
        return message
    parsed = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            arguments = function.get("arguments")
            if arguments in (None, ""):
                arguments = {}
            elif isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    raise ValueError(f"messages[{index}].tool_calls[{j}].function.arguments is not valid JSON"
                                     ) from None
            call = {**call, "function": {**function, "arguments": arguments}}
        parsed.append(call)
    return {**message, "tool_calls": parsed}


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
