"""xgrammar: the grammar engine behind structured outputs (engine-core side).

One GrammarCompiler per engine, built from the HF tokenizer with the MODEL's vocab size (a
model's embedding table is often padded beyond the tokenizer's vocabulary; the padding ids are
never allowed). A compiled grammar is immutable and shared; each request gets its own matcher.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xgrammar as xgr

from pagedlm.structured_output.validate import InvalidStructuredOutputError, clean_message

BITMASK_DTYPE = np.int32


def bitmask_width(vocab_size: int) -> int:
    return -(-vocab_size // 32)


class XgrammarBackend:
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: list[int], max_threads: int = 4) -> None:
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size,
                                                  stop_token_ids=stop_token_ids or None)
        # Our own cache (the manager's) keys compiled grammars; xgrammar's would hold a second copy.
        self.compiler = xgr.GrammarCompiler(info, max_threads=max_threads, cache_enabled=False)
        self.batch = xgr.BatchGrammarMatcher(max_threads=max_threads)

    def compile(self, kind: str, spec: str, any_whitespace: bool) -> "xgr.CompiledGrammar":
        """kind/spec from validate.grammar_spec; raises InvalidStructuredOutputError."""
        try:
            if kind == "json":
                return self.compiler.compile_json_schema(spec, any_whitespace=any_whitespace)
            if kind == "json_object":
                return self.compiler.compile_builtin_json_grammar()
            if kind == "regex":
                return self.compiler.compile_regex(spec)
            if kind == "grammar":
                return self.compiler.compile_grammar(spec)
            if kind == "lark":
                return self.compiler.compile_lark(spec)
            if kind == "structural_tag":  # spec: the format form's JSON text (structural_tag.py)
                return self.compiler.compile_structural_tag(spec)
        except Exception as e:  # noqa: BLE001 - xgrammar's RuntimeError carries the reason
            raise InvalidStructuredOutputError(f"the {kind} constraint cannot be compiled: {clean_message(e)}") from e
        raise InvalidStructuredOutputError(f"unknown structured output kind {kind!r}")

    @staticmethod
    def new_matcher(compiled: "xgr.CompiledGrammar") -> "xgr.GrammarMatcher":
        return xgr.GrammarMatcher(compiled)

    def fill_bitmask(self, matchers: list["xgr.GrammarMatcher"], bitmask: np.ndarray, rows: list[int]) -> None:
        """Row rows[i] of bitmask [N, W] <- the tokens matcher i allows next (xgrammar's threads)."""
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask, rows)
