"""A tolerant scanner over JSON text that may be cut short (a stream in progress).

It finds where values start and end without parsing them, so a tool call's arguments can be
streamed as the exact characters the model wrote: each fragment is a prefix of the final raw
value, and the fragments concatenate to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

_WS = " \t\r\n"


def skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def value_end(text: str, pos: int) -> int | None:
    """End index of the JSON value starting at ``pos``, or None if the text stops inside it."""
    if pos >= len(text):
        return None
    ch = text[pos]
    if ch == '"':
        return _string_end(text, pos)
    if ch in "{[":
        return _container_end(text, pos)
    end = pos
    while end < len(text) and text[end] not in ',}] \t\r\n':
        end += 1
    return end if end < len(text) else None  # a number may still grow


def _string_end(text: str, pos: int) -> int | None:
    i = pos + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == '"':
            return i + 1
        i += 1
    return None


def _container_end(text: str, pos: int) -> int | None:
    depth, i = 0, pos
    while i < len(text):
        ch = text[i]
        if ch == '"':
            end = _string_end(text, i)
            if end is None:
                return None
            i = end
            continue
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


@dataclass
class PartialCall:
    name: str | None = None  # known once its string is complete
    arguments: str | None = None  # raw JSON text of the arguments so far (a prefix of the final)
    complete: bool = False  # the call's object (hence its arguments) is closed
    id: str | None = None  # the id the model wrote for the call (Kimi-K2's), else a fresh one


def scan_call_object(text: str, pos: int, args_keys: tuple[str, ...] = ("arguments", "parameters")
                     ) -> tuple[PartialCall, int | None]:
    """A ``{"name": ..., "arguments": {...}}`` object starting at ``pos`` -> (call, end index or None)."""
    call = PartialCall()
    if pos >= len(text) or text[pos] != "{":
        return call, None
    i = skip_ws(text, pos + 1)
    while i < len(text) and text[i] != "}":
        key_end = _string_end(text, i) if text[i] == '"' else None
        if key_end is None:
            return call, None
        key = json.loads(text[i:key_end])
        i = skip_ws(text, key_end)
        if i >= len(text) or text[i] != ":":
            return call, None
        start = skip_ws(text, i + 1)
        end = value_end(text, start)
        if key == "name" and end is not None:
            call.name = json.loads(text[start:end])
        elif key in args_keys and start < len(text):
            call.arguments = text[start:end] if end is not None else text[start:]
        if end is None:
            return call, None
        i = skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i = skip_ws(text, i + 1)
    if i >= len(text):
        return call, None
    call.complete = True
    return call, i + 1


def scan_call_array(text: str, pos: int) -> tuple[list[PartialCall], int | None]:
    """``[{call}, {call}, ...]`` starting at ``pos`` -> (calls so far, end index or None)."""
    calls: list[PartialCall] = []
    if pos >= len(text) or text[pos] != "[":
        return calls, None
    i = skip_ws(text, pos + 1)
    while i < len(text) and text[i] != "]":
        call, end = scan_call_object(text, i)
        if i < len(text) and text[i] == "{":
            calls.append(call)
        if end is None:
            return calls, None
        i = skip_ws(text, end)
        if i < len(text) and text[i] == ",":
            i = skip_ws(text, i + 1)
    return calls, (i + 1 if i < len(text) else None)


def is_valid_json(text: str | None) -> bool:
    if text is None:
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
