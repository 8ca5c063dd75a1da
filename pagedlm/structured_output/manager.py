"""StructuredOutputManager: lives in the engine core next to the scheduler (never in the API
process). It compiles grammars in a thread pool with a cache keyed by (kind, spec), keeps one
matcher per constrained request, builds the step's token bitmask for the constrained requests
that sample, and advances each matcher with the tokens the scheduler accepts.

A request whose grammar is still compiling waits in WAITING_FOR_GRAMMAR: the scheduler skips
it and serves the others. A grammar that fails to compile fails only its request.

With a reasoning parser, the constraint starts after the reasoning part: tokens up to and
including the end marker (``</think>``) are not fed to the matcher and are not masked.
"""

from __future__ import annotations

import concurrent.futures
import enum
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from pagedlm.engine.request import Request, RequestStatus
from pagedlm.structured_output.validate import InvalidStructuredOutputError, grammar_spec

if TYPE_CHECKING:
    from pagedlm.config import EngineConfig
    from pagedlm.structured_output.xgrammar_backend import XgrammarBackend

logger = logging.getLogger(__name__)

CACHE_SIZE = 1024


class Reasoning(enum.IntEnum):
    ENDED = 0  # the constraint applies
    THINKING = 1  # inside <think>...</think>: unconstrained until the end marker
    UNDECIDED = 2  # the model may open a reasoning block with its first token, or answer directly


@dataclass(frozen=True)
class ReasoningMarkers:
    start_id: int
    end_id: int
    # deepseek_r1: the chat template already opened the block, output starts inside it.
    implicit_start: bool
    # The parser's markers are not single tokens (hunyuan_a13b): why constraints are refused.
    refused: str | None = None


@dataclass
class RequestGrammar:
    future: concurrent.futures.Future
    reasoning: Reasoning = Reasoning.ENDED
    matcher: Any = None  # xgrammar.GrammarMatcher once compiled


class Verdict(enum.IntEnum):
    OK = 0
    TERMINATED = 1  # the grammar is complete (its stop token was accepted): finish the request
    REJECTED = 2  # the token is not allowed (a bug, or a mask skipped): fail the request


class StructuredOutputManager:
    def __init__(self, make_backend: Callable[[], "XgrammarBackend"] | None,
                 reasoning: ReasoningMarkers | None = None, max_workers: int = 2) -> None:
        self._make_backend = make_backend
        self._backend: XgrammarBackend | None = None
        self._backend_lock = threading.Lock()
        self.reasoning = reasoning
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._max_workers = max_workers
        self._cache: OrderedDict[tuple, concurrent.futures.Future] = OrderedDict()
        self._pending: set[concurrent.futures.Future] = set()

    @classmethod
    def from_config(cls, config: "EngineConfig") -> "StructuredOutputManager":
        from pagedlm.structured_output.engine_setup import make_backend_factory, reasoning_markers

        factory, tokenizer_loader = make_backend_factory(config)
        markers = reasoning_markers(config, tokenizer_loader)
        return cls(factory, markers)

    # ---- requests ---------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        params = request.sampling_params.structured_outputs
        if params is None:
            return
        if self._make_backend is None:
            raise InvalidStructuredOutputError("structured outputs are not available in this engine")
        if self.reasoning is not None and self.reasoning.refused:
            raise InvalidStructuredOutputError(self.reasoning.refused)
        kind, spec = grammar_spec(params)
        key = (kind, spec, not params.disable_any_whitespace)
        future = self._cache.get(key)
        if future is None:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(self._max_workers, "pagedlm-grammar")
            future = self._executor.submit(self._compile, kind, spec, not params.disable_any_whitespace)
            self._cache[key] = future
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        if not future.done():
            self._pending.add(future)
        request.structured_output = RequestGrammar(future, self._initial_reasoning(request.prompt_token_ids))
        request.status = RequestStatus.WAITING_FOR_GRAMMAR

    def _compile(self, kind: str, spec: str, any_whitespace: bool) -> Any:
        with self._backend_lock:
            if self._backend is None:
                self._backend = self._make_backend()
        return self._backend.compile(kind, spec, any_whitespace)

    def _initial_reasoning(self, prompt_token_ids: list[int]) -> Reasoning:
        markers = self.reasoning
        if markers is None:
            return Reasoning.ENDED
        # The last marker in the prompt decides (earlier turns may hold whole reasoning blocks).
        for token_id in reversed(prompt_token_ids):
            if token_id == markers.end_id:
                return Reasoning.ENDED
            if token_id == markers.start_id:
                return Reasoning.THINKING
        return Reasoning.THINKING if markers.implicit_start else Reasoning.UNDECIDED

    def grammar_ready(self, request: Request) -> bool:
        """For a WAITING_FOR_GRAMMAR request: True once compiled (the request may be scheduled);
        raises InvalidStructuredOutputError if the compile failed."""
        grammar: RequestGrammar = request.structured_output
        if not grammar.future.done():
            return False
        compiled = grammar.future.result()  # raises the compile error
        grammar.matcher = self._backend.new_matcher(compiled)
        return True

    def wait_for_compiles(self, timeout: float) -> None:
        """Nothing could be scheduled: sleep until a grammar is ready (or timeout), not spin."""
        self._pending = {f for f in self._pending if not f.done()}
        if self._pending:
            concurrent.futures.wait(self._pending, timeout, concurrent.futures.FIRST_COMPLETED)

    # ---- one step ---------------------------------------------------------------------
    @staticmethod
    def sampling_request_ids(requests: dict[str, Request], scheduled_req_ids: list[str]) -> list[str]:
        """The constrained requests that sample a token this step (just scheduled: the step
        computes up to their last known token, so each has a token pending)."""
        ids = []
        for req_id in scheduled_req_ids:
            r = requests[req_id]
            if (r.structured_output is not None and r.num_pending_tokens
                    and r.num_computed_tokens == r.num_tokens + r.num_pending_tokens - 1):
                ids.append(req_id)
        return ids

    def grammar_bitmask(self, requests: dict[str, Request], scheduled_req_ids: list[str]
                        ) -> tuple[list[str], np.ndarray | None]:
        """(req ids, bitmask) for a step whose previous tokens are all known (sync scheduling)."""
        ids = [r for r in self.sampling_request_ids(requests, scheduled_req_ids)
               if requests[r].structured_output.reasoning != Reasoning.THINKING]
        return (ids, self.bitmask_for(requests, ids)) if ids else ([], None)

    def bitmask_for(self, requests: dict[str, Request], req_ids: list[str]) -> np.ndarray:
        """int32 [len(req_ids), ceil(V/32)]: row i = what request i's matcher allows next. A request
        that finished meanwhile, or is reasoning, gets an all-ones row (unconstrained)."""
        from pagedlm.structured_output.xgrammar_backend import bitmask_width

        bitmask = np.full((len(req_ids), bitmask_width(self._backend.vocab_size)), -1, dtype=np.int32)
        rows, matchers, undecided = [], [], []
        for row, req_id in enumerate(req_ids):
            request = requests.get(req_id)
            grammar: RequestGrammar | None = request.structured_output if request is not None else None
            if grammar is None or request.is_finished or grammar.reasoning == Reasoning.THINKING:
                continue
            if grammar.reasoning == Reasoning.UNDECIDED:
                undecided.append(row)
            rows.append(row)
            matchers.append(grammar.matcher)
        if matchers:
            self._backend.fill_bitmask(matchers, bitmask, rows)
        if undecided:  # the first token may also open a reasoning block
            start = self.reasoning.start_id
            word = bitmask[undecided, start // 32].view(np.uint32) | np.uint32(1 << (start % 32))
            bitmask[undecided, start // 32] = word.view(np.int32)
        return bitmask

    def accept_token(self, request: Request, token_id: int) -> Verdict:
        grammar: RequestGrammar | None = request.structured_output
        if grammar is None:
            return Verdict.OK
        if grammar.reasoning == Reasoning.THINKING:
            if token_id == self.reasoning.end_id:
                grammar.reasoning = Reasoning.ENDED
            return Verdict.OK
        if grammar.reasoning == Reasoning.UNDECIDED:
            if token_id == self.reasoning.start_id:
                grammar.reasoning = Reasoning.THINKING
                return Verdict.OK
            grammar.reasoning = Reasoning.ENDED
        if not grammar.matcher.accept_token(token_id):
            return Verdict.REJECTED
        return Verdict.TERMINATED if grammar.matcher.is_terminated() else Verdict.OK

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
