"""Chat messages -> prompt token ids through the model's chat template.

The template comes from the tokenizer (tokenizer_config.json / chat_template.jinja) or the
server's --chat-template (EngineArgs puts it on the tokenizer). transformers renders it in
Jinja's immutable sandbox. The rendered text already holds the template's special tokens
(BOS...), so it is tokenized without adding them again, as vLLM does.

Message content reaches the template in one of vLLM's content formats (string / openai /
auto: ``pagedlm.entrypoints.chat_content``).
"""

from __future__ import annotations

from typing import Any

from pagedlm.entrypoints.chat_content import NO_TEMPLATE_MESSAGE as VLLM_NO_TEMPLATE_MESSAGE
from pagedlm.entrypoints.chat_content import (harmony_thinking, resolve_content_format, template_content,
                                              template_message)
from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.entrypoints.openai.protocol import ChatMessage

# Keys the caller of apply_chat_template sets itself; chat_template_kwargs may not override them.
_RESERVED_TEMPLATE_KWARGS = {
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "return_dict", "return_tensors", "tokenizer_kwargs",
}

NO_TEMPLATE_MESSAGE = VLLM_NO_TEMPLATE_MESSAGE + (
    " The model has no chat template (none in its tokenizer_config.json or chat_template.jinja), "
    "so chat requests cannot be formatted. Start the server with --chat-template <file or template>, "
    "or use /v1/completions with a plain prompt."
)


def _content(content: Any, index: int, content_format: str) -> str | list[dict[str, str]]:
    try:
        return template_content(content, index, content_format)
    except ValueError as e:
        raise OpenAIError(str(e), 400, f"messages[{index}].content") from e


def message_text(message: ChatMessage, index: int) -> str | None:
    """Content as text: the text parts joined with newlines (the 'string' content format)."""
    return None if message.content is None else _content(message.content, index, "string")


def to_conversation(messages: list[ChatMessage], content_format: str = "string") -> list[dict[str, Any]]:
    conversation = []
    for i, message in enumerate(messages):
        try:
            conversation.append(template_message(message.model_dump(exclude_none=True), i, content_format))
        except ValueError as e:
            raise OpenAIError(str(e), 400, f"messages[{i}]") from e
    return conversation


def render_chat(
    tokenizer: Any,
    messages: list[ChatMessage],
    add_generation_prompt: bool = True,
    continue_final_message: bool = False,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
    add_special_tokens: bool = False,
    content_format: str = "auto",
    documents: list[dict[str, Any]] | None = None,
) -> tuple[str, list[int]]:
    """-> (prompt text, prompt token ids). Raises OpenAIError(400) on a template problem."""
    if not getattr(tokenizer, "chat_template", None):
        raise OpenAIError(NO_TEMPLATE_MESSAGE, 400, "messages")
    conversation = harmony_thinking(
        to_conversation(messages, resolve_content_format(content_format, tokenizer.chat_template)),
        tokenizer.chat_template)
    extra = dict(template_kwargs or {})
    clash = sorted(set(extra) & _RESERVED_TEMPLATE_KWARGS)
    if clash:
        raise OpenAIError(f"chat_template_kwargs may not set {clash}", 400, "chat_template_kwargs")
    try:
        text = tokenizer.apply_chat_template(
            conversation, tools=tools, documents=documents, tokenize=False,
            add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message, **extra,
        )
    except Exception as e:  # noqa: BLE001 - jinja TemplateError, raise_exception(), bad input
        raise OpenAIError(f"the chat template could not render these messages: {e}", 400, "messages") from e
    if not isinstance(text, str):
        raise OpenAIError("the chat template did not render to text", 400, "messages")
    return text, tokenizer.encode(text, add_special_tokens=add_special_tokens)
