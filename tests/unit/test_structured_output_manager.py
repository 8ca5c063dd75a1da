"""The engine-core structured-output manager without a model: grammar readiness, bitmask rows
only for constrained requests that sample, reasoning gating, matcher verdicts; and the runner's
bitmask application."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("xgrammar")

from pagedlm.engine.request import Request, RequestStatus  # noqa: E402
from pagedlm.sampling_params import SamplingParams, StructuredOutputsParams  # noqa: E402
from pagedlm.structured_output.apply import apply_grammar_bitmask  # noqa: E402
from pagedlm.structured_output.manager import (  # noqa: E402
    Reasoning,
    ReasoningMarkers,
    StructuredOutputManager,
    Verdict,
)
from pagedlm.structured_output.xgrammar_backend import XgrammarBackend  # noqa: E402

VOCAB = 600  # the model's vocabulary is larger than the tokenizer's 512


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from pagedlm.demo import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def make_manager(tokenizer, markers: ReasoningMarkers | None = None) -> StructuredOutputManager:
    return StructuredOutputManager(lambda: XgrammarBackend(tokenizer, VOCAB, [tokenizer.eos_token_id]), markers)


def constrained(tokenizer, prompt: list[int], choice: list[str]) -> Request:
    params = SamplingParams(structured_outputs=StructuredOutputsParams(choice=choice))
    return Request("r", prompt, params, tokenizer.eos_token_id)


def ready(manager: StructuredOutputManager, request: Request) -> None:
    manager.add_request(request)
    assert request.status == RequestStatus.WAITING_FOR_GRAMMAR
    request.structured_output.future.result(timeout=30)
    assert manager.grammar_ready(request)
    request.num_computed_tokens = request.num_tokens  # as if scheduled to sample
    request.num_pending_tokens = 1


def allowed(bitmask_row: np.ndarray) -> set[int]:
    bits = np.unpackbits(bitmask_row.view(np.uint8), bitorder="little")
    return {int(i) for i in np.nonzero(bits)[0]}


def test_bitmask_allows_only_the_grammar_then_stop(tokenizer) -> None:
    manager = make_manager(tokenizer)
    request = constrained(tokenizer, [1, 2], ["yes"])
    ready(manager, request)
    plain = Request("p", [1, 2], SamplingParams(), tokenizer.eos_token_id)
    plain.num_computed_tokens = 2
    ids, bitmask = manager.grammar_bitmask({"r": request, "p": plain}, ["r", "p"])
    assert ids == ["r"] and bitmask.shape == (1, -(-VOCAB // 32))
    yes = tokenizer.encode("yes", add_special_tokens=False)
    assert yes[0] in allowed(bitmask[0]) and max(allowed(bitmask[0])) < 512  # padding ids never allowed
    for token in yes:
        assert manager.accept_token(request, token) == Verdict.OK
    _, bitmask = manager.grammar_bitmask({"r": request}, ["r"])
    assert allowed(bitmask[0]) == {tokenizer.eos_token_id}
    assert manager.accept_token(request, tokenizer.eos_token_id) == Verdict.TERMINATED


def test_rejected_token_and_partial_prefill(tokenizer) -> None:
    manager = make_manager(tokenizer)
    request = constrained(tokenizer, [1, 2, 3], ["yes"])
    ready(manager, request)
    request.num_computed_tokens = 2  # a prefill chunk: does not sample, gets no row
    assert manager.grammar_bitmask({"r": request}, ["r"]) == ([], None)
    assert manager.accept_token(request, tokenizer.encode("no", add_special_tokens=False)[0]) == Verdict.REJECTED


def test_reasoning_gates_the_constraint(tokenizer) -> None:
    markers = ReasoningMarkers(start_id=10, end_id=11, implicit_start=False)
    manager = make_manager(tokenizer, markers)
    thinking = constrained(tokenizer, [1, 10], ["yes"])  # the prompt opened the block
    ready(manager, thinking)
    assert thinking.structured_output.reasoning == Reasoning.THINKING
    assert manager.grammar_bitmask({"r": thinking}, ["r"]) == ([], None)  # unconstrained while thinking
    assert manager.accept_token(thinking, 300) == Verdict.OK
    assert manager.accept_token(thinking, 11) == Verdict.OK
    assert manager.grammar_bitmask({"r": thinking}, ["r"])[0] == ["r"]
    closed = constrained(tokenizer, [10, 11, 5], ["yes"])  # closed in the prompt: constrained at once
    ready(manager, closed)
    assert closed.structured_output.reasoning == Reasoning.ENDED
    undecided = constrained(tokenizer, [5], ["yes"])
    ready(manager, undecided)
    _, bitmask = manager.grammar_bitmask({"r": undecided}, ["r"])
    assert 10 in allowed(bitmask[0])  # may open a block, or answer directly
    assert manager.accept_token(undecided, 10) == Verdict.OK
    assert undecided.structured_output.reasoning == Reasoning.THINKING


def test_compile_failure_is_raised_at_readiness(tokenizer) -> None:
    manager = make_manager(tokenizer)
    params = SamplingParams(structured_outputs=StructuredOutputsParams(regex="a(b"))
    request = Request("r", [1], params, tokenizer.eos_token_id)
    manager.add_request(request)
    request.structured_output.future.exception(timeout=30)
    with pytest.raises(ValueError, match="cannot be compiled"):
        manager.grammar_ready(request)


def test_apply_bitmask_rows() -> None:
    bitmask = np.zeros((1, 2), dtype=np.int32)
    bitmask[0, 0] = 0b101  # tokens 0 and 2
    logits = apply_grammar_bitmask(torch.zeros(3, 40), bitmask, [1])
    assert torch.isinf(logits[1]).sum() == 38 and not torch.isinf(logits[[0, 2]]).any()
    only = apply_grammar_bitmask(torch.zeros(1, 40), bitmask, [0])
    assert (only[0] > -1).nonzero().flatten().tolist() == [0, 2]
