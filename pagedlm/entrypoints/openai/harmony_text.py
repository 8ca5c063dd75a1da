"""OpenAI's harmony format (gpt-oss), read from the detokenized text with its special tokens kept.

After the chat template's ``<|start|>assistant``, gpt-oss writes messages such as::

    <|channel|>analysis<|message|>thinking...<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Paris"}<|call|>
    <|start|>assistant<|channel|>final<|message|>answer...<|return|>

A message is a header (its channel after ``<|channel|>``, a recipient ``to=NAME`` before or after
the channel, a content type), ``<|message|>``, its body, and ``<|end|>`` / ``<|call|>`` /
``<|return|>``. ``<|return|>`` and ``<|call|>`` are stop tokens, so the text usually ends without
them. vLLM parses the token ids with the ``openai_harmony`` package; this module does the same
from the text (the package is not needed), so the parsers work on whatever the detokenizer gives.

``parse_messages(text, final)`` -> the messages so far, or None when the text is not harmony
(it must start with a header: ``<|channel|>``, ``<|start|>``, ``to=`` or ``assistant``). While
streaming, a body's tail that may be the start of a special token is held back, so each body
only grows. A ``<|start|>`` or ``<|channel|>`` inside a body also ends it (a model that skips
``<|end|>``); other special tokens inside a body are dropped (vLLM strips them too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

START, END, MESSAGE, CHANNEL = "<|start|>", "<|end|>", "<|message|>", "<|channel|>"
CONSTRAIN, RETURN, CALL = "<|constrain|>", "<|return|>", "<|call|>"
MARKERS = (START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL)

_TERMINATOR = re.compile(r"<\|(?:end|call|return|start|channel)\|>")
_CONSUMED = (END, CALL, RETURN)  # START / CHANNEL begin the next message
_TOKEN = re.compile(r"<\|[a-z0-9_]+\|>")
_PARTIAL_TOKEN = re.compile(r"<(?:\|[a-z0-9_]*\|?)?$")
_HARMONY_START = re.compile(r"(?:<\|start\|>|<\|channel\|>|\s*to=|assistant(?:<\|channel\|>|\s*to=))")
# What a harmony output may begin with, for holding back a stream's first characters.
_OPENINGS = (CHANNEL, START, " to=", "to=", "assistant<|channel|>", "assistant to=")
_CHANNEL = re.compile(r"<\|channel\|>\s*([^\s<]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


@dataclass
class HarmonyMessage:
    channel: str | None
    recipient: str | None  # e.g. "functions.get_weather"
    body: str
    closed: bool  # a terminator followed the body (else the text ends inside it)


def may_open(text: str) -> bool:
    """While streaming: the text is still a possible beginning of a harmony output."""
    return any(opening.startswith(text) for opening in _OPENINGS)


def is_harmony(text: str) -> bool:
    return _HARMONY_START.match(text) is not None


def _header(header: str) -> tuple[str | None, str | None]:
    channels = _CHANNEL.findall(header)
    recipient = _RECIPIENT.search(header)
    return (channels[-1] if channels else None), (recipient.group(1) if recipient else None)


def parse_messages(text: str, final: bool) -> list[HarmonyMessage] | None:
    if not is_harmony(text):
        return None
    messages: list[HarmonyMessage] = []
    pos = 0
    while pos < len(text):
        if text.startswith(START, pos):
            pos += len(START)
        begin = text.find(MESSAGE, pos)
        if begin < 0:
            break  # the header is not complete (or stray text after the last message)
        channel, recipient = _header(text[pos:begin])
        body_start = begin + len(MESSAGE)
        end = _TERMINATOR.search(text, body_start)
        if end is not None:
            body, closed = text[body_start:end.start()], True
            pos = end.end() if end.group() in _CONSUMED else end.start()
        else:
            body, closed = text[body_start:], False
            if not final:
                partial = _PARTIAL_TOKEN.search(body)
                if partial is not None:
                    body = body[:partial.start()]
            pos = len(text)
        messages.append(HarmonyMessage(channel, recipient, _TOKEN.sub("", body), closed))
    return messages


def join(parts: list[str]) -> str | None:
    """Message bodies as one text, newline-separated (vLLM's), empty ones left out."""
    return "\n".join(p for p in parts if p) or None
