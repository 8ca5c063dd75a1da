"""Incremental detokenization and stop-string detection (vLLM V1 semantics).

Each request owns one ``IncrementalDetokenizer``. Generated ids are decoded through a small
sliding window of token ids (the tokens of the last emitted chunk as context, plus the tokens
not yet emitted), the same algorithm as ``tokenizers.decoders.DecodeStream``: a token's text is
``decode(window + [id])`` minus ``decode(context)``, and nothing is emitted while the window's
text ends with U+FFFD (a character whose remaining bytes are in tokens still to come). Each
step decodes a handful of ids, so the work per token does not grow with the output length.

The window starts primed with a short, cleanly decodable suffix of the prompt, so decoders
that treat the first token specially (SentencePiece's leading "▁") give the text that follows
the prompt (" Paris", not "Paris"), as vLLM does.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from pagedlm.sampling_params import SamplingParams

REPLACEMENT_CHAR = "\ufffd"
# Prompt-suffix lengths (in tokens) tried to prime the window.
_PRIME_MIN_TOKENS = 4
_PRIME_MAX_TOKENS = 24
# Undecodable tokens held before forcing their text out: a real character spans at most
# 4 byte tokens, so only a long run of invalid bytes reaches this (keeps each step O(1)).
_MAX_PENDING_TOKENS = 64


@dataclass
class _TokenizerInfo:
    """Per-tokenizer facts, computed once and shared by all requests."""

    special_ids: frozenset[int]  # dropped by decode(skip_special_tokens=True)
    added: dict[int, str]  # added-token id -> its content
    token_text: dict[int, str] = field(default_factory=dict)  # decode_token cache


_INFO_CACHE: "weakref.WeakKeyDictionary[Any, _TokenizerInfo]" = weakref.WeakKeyDictionary()


def _build_info(tokenizer: Any) -> _TokenizerInfo:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        added_tokens = backend.get_added_tokens_decoder()
        added = {i: t.content for i, t in added_tokens.items()}
        special = frozenset(i for i, t in added_tokens.items() if t.special)
    else:
        added = {i: str(t) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
        special = frozenset(tokenizer.all_special_ids)
    return _TokenizerInfo(special_ids=special, added=added)


def _tokenizer_info(tokenizer: Any) -> _TokenizerInfo:
    try:
        info = _INFO_CACHE.get(tokenizer)
        if info is None:
            info = _INFO_CACHE[tokenizer] = _build_info(tokenizer)
        return info
    except TypeError:  # not weak-referenceable / hashable: no sharing
        return _build_info(tokenizer)


class IncrementalDetokenizer:
    """Turns a request's generated token ids into text, checks stop strings.

    Call ``update`` with each step's new ids, then ``get_next_output_text`` for the text to
    hand out. Once the request finishes for any reason other than a stop string or stop token
    (length, abort), call ``get_next_output_text(finished=True, ...)`` at least once: it flushes
    the bytes of an incomplete last character (as U+FFFD, like a full decode would).
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.tokenizer = tokenizer
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        # No tokenizer (skip_tokenizer_init): ids only, empty text, no decoded logprob tokens.
        self._info = _tokenizer_info(tokenizer) if tokenizer is not None else None
        self.detokenize = params.detokenize and tokenizer is not None
        self.skip_special_tokens = params.skip_special_tokens
        # vLLM: with special tokens kept and no spaces between them, a special token that
        # follows another one is emitted as its raw content (no space the decoder may add).
        self._raw_consecutive_added = not (params.skip_special_tokens or params.spaces_between_special_tokens)
        self._last_added = False
        self.stop: list[str] = list(params.stop or [])
        self.include_stop_str_in_output = params.include_stop_str_in_output
        self.min_tokens = params.min_tokens
        self._max_stop_len = max((len(s) for s in self.stop), default=0)
        hold = self.stop and not self.include_stop_str_in_output
        self.stop_buffer_length = self._max_stop_len - 1 if hold else 0
        self.output_token_ids: list[int] = []
        self._chunks: list[str] = []  # output text, joined lazily
        self._num_chars = 0
        self._last_offset = 0  # chars already handed out by delta calls
        self._done = False  # a stop string/token was seen or the text was flushed
        # Decode window: ids[:prefix_index] decode to prefix (emitted context); the rest is pending.
        self._ids: list[int] = []
        self._prefix = ""
        self._prefix_index = 0
        if self.detokenize:
            self._prime(prompt_token_ids)

    # ------------------------------------------------------------------ public API

    @property
    def output_text(self) -> str:
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    def update(self, new_token_ids: list[int], stop_terminated: bool) -> str | None:
        """Add new ids; return the stop string matched in the new text, else None.

        ``stop_terminated``: the last id is a stop token / EOS. It is left out of the text
        unless ``include_stop_str_in_output``. On a stop-string match the text is cut before
        the stop string (after it with ``include_stop_str_in_output``); later calls are no-ops.
        """
        if not new_token_ids or self._done:
            return None
        first_index = len(self.output_token_ids)
        self.output_token_ids.extend(new_token_ids)
        if not self.detokenize:
            return None
        to_decode = new_token_ids
        if stop_terminated and not self.include_stop_str_in_output:
            to_decode = new_token_ids[:-1]
        check_from = self._num_chars
        for i, token_id in enumerate(to_decode):
            self._append(self._decode_next(token_id))
            if first_index + i + 1 <= self.min_tokens:
                check_from = self._num_chars  # stop strings only count after min_tokens
        if stop_terminated:
            self._finish()
        return self._check_stop_strings(check_from)

    def get_next_output_text(self, finished: bool, delta: bool) -> str:
        """The text to hand out now (all of it, or with ``delta`` only what is new).

        While not finished, the last ``max(len(stop)) - 1`` chars are held back when stop strings
        are set (they may begin a stop string), unless ``include_stop_str_in_output``.
        """
        if finished:
            self._finish()
        buffer_length = 0 if finished else self.stop_buffer_length
        length = max(0, self._num_chars - buffer_length)
        if not delta:
            return self.output_text[:length]
        if length <= self._last_offset:
            return ""
        text = self._tail(self._num_chars - self._last_offset)[: length - self._last_offset]
        self._last_offset = length
        return text

    def decode_token(self, token_id: int) -> str | None:
        """Text of one token on its own (for ``Logprob.decoded_token``): the tokenizer's
        ``convert_tokens_to_string(convert_ids_to_tokens([id]))``, cached per tokenizer; None
        without a tokenizer."""
        if self._info is None:
            return None
        cache = self._info.token_text
        text = cache.get(token_id)
        if text is None:
            text = cache[token_id] = self._single_token_text(token_id)
        return text

    # ------------------------------------------------------------------ decoding

    def _decode(self, ids: list[int]) -> str:
        if self._backend is not None:
            return self._backend.decode(ids, skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _prime(self, prompt_token_ids: list[int]) -> None:
        """Use the shortest prompt suffix (>= 4 tokens) that decodes without U+FFFD as context."""
        n_prompt = len(prompt_token_ids)
        for n in range(max(1, min(n_prompt, _PRIME_MIN_TOKENS)), min(n_prompt, _PRIME_MAX_TOKENS) + 1):
            suffix = list(prompt_token_ids[-n:])
            text = self._decode(suffix)
            if REPLACEMENT_CHAR not in text:
                self._ids, self._prefix, self._prefix_index = suffix, text, n
                return

    def _decode_next(self, token_id: int) -> str:
        if self.skip_special_tokens and token_id in self._info.special_ids:
            return ""  # decode would drop it anyway; keep it out of the window
        text = self._step(token_id)
        if self._raw_consecutive_added:
            is_added = token_id in self._info.added
            if is_added and self._last_added:
                text = self._info.added[token_id]
            self._last_added = is_added
        return text

    def _ready(self, text: str) -> bool:
        if len(text) <= len(self._prefix):
            return False
        pending = len(self._ids) - self._prefix_index
        return not text.endswith(REPLACEMENT_CHAR) or pending >= _MAX_PENDING_TOKENS

    def _step(self, token_id: int) -> str:
        """Add one id to the window; return the text it completes ('' while incomplete)."""
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if not self._ready(text):
            return ""
        if not text.startswith(self._prefix):
            # The context decodes differently once followed by this token (non-monotonic
            # decoder): drop the context, keep the pending ids.
            self._drop_context()
            text = self._decode(self._ids)
            if not self._ready(text):
                return ""
        new_text = text[len(self._prefix) :]
        self._ids = self._ids[self._prefix_index :]
        self._prefix = self._decode(self._ids)
        self._prefix_index = len(self._ids)
        return new_text

    def _drop_context(self) -> None:
        self._ids = self._ids[self._prefix_index :]
        self._prefix, self._prefix_index = "", 0

    def _finish(self) -> None:
        """No more tokens: emit what the pending ids decode to, even if incomplete."""
        if self._done:
            return
        self._done = True
        if not self.detokenize or len(self._ids) <= self._prefix_index:
            return
        text = self._decode(self._ids)
        if not text.startswith(self._prefix):
            self._drop_context()
            text = self._decode(self._ids)
        self._append(text[len(self._prefix) :])
        self._ids, self._prefix, self._prefix_index = [], "", 0

    def _single_token_text(self, token_id: int) -> str:
        if self._backend is None:
            tokens = self.tokenizer.convert_ids_to_tokens([token_id])
            return self.tokenizer.convert_tokens_to_string(tokens)
        token = self._backend.id_to_token(token_id)
        if token is None:
            return ""
        decoder = self._backend.decoder
        return decoder.decode([token]) if decoder is not None else token

    # ------------------------------------------------------------------ text buffer, stop strings

    def _append(self, text: str) -> None:
        if text:
            self._chunks.append(text)
            self._num_chars += len(text)

    def _tail(self, n: int) -> str:
        """The last n chars of the output text, touching only the chunks needed."""
        if n <= 0:
            return ""
        parts: list[str] = []
        for chunk in reversed(self._chunks):
            if len(chunk) >= n:
                parts.append(chunk[len(chunk) - n :])
                break
            parts.append(chunk)
            n -= len(chunk)
        return "".join(reversed(parts))

    def _truncate(self, length: int) -> None:
        text = self.output_text[:length]
        self._chunks = [text] if text else []
        self._num_chars = len(text)
        self._last_offset = min(self._last_offset, self._num_chars)

    def _check_stop_strings(self, check_from: int) -> str | None:
        """Find the earliest stop string overlapping text added at or after ``check_from``."""
        if not self.stop or self._num_chars <= check_from:
            return None
        window_start = max(0, check_from - (self._max_stop_len - 1))
        window = self._tail(self._num_chars - window_start)
        new_from = check_from - window_start
        best: tuple[int, str] | None = None
        for stop_str in self.stop:
            index = window.find(stop_str, max(0, new_from - len(stop_str) + 1))
            if index != -1 and (best is None or index < best[0]):
                best = (index, stop_str)
        if best is None:
            return None
        index, stop_str = best
        keep = len(stop_str) if self.include_stop_str_in_output else 0
        self._truncate(window_start + index + keep)
        self._done = True
        return stop_str
