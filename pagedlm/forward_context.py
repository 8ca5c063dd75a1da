"""The per-step state the attention layers read, set by the model runner around forward()."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from pagedlm.attention.metadata import AttentionMetadata

_current: AttentionMetadata | None = None


@contextmanager
def set_forward_context(attn_metadata: AttentionMetadata | None) -> Iterator[None]:
    global _current
    prev, _current = _current, attn_metadata
    try:
        yield
    finally:
        _current = prev


def get_attn_metadata() -> AttentionMetadata:
    if _current is None:
        raise RuntimeError("attention called outside set_forward_context()")
    return _current
