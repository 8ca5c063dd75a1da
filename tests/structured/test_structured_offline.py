"""Structured outputs offline, on a tiny random-weight checkpoint: at temperature 1 only the
constraint can make its output valid, so every output parsing and validating shows the mask
is applied at every step and the matcher follows every token (with n > 1, prefix caching,
chunked prefill, preemption, and async scheduling)."""

from __future__ import annotations

import json
import re
import threading

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("xgrammar")

from pagedlm import LLM, SamplingParams  # noqa: E402
from pagedlm.engine.request import RequestStatus  # noqa: E402
from pagedlm.sampling_params import StructuredOutputsParams  # noqa: E402

# Nested objects, arrays, enums, required fields and string patterns, every part bounded so
# the grammar forces termination well within max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "string", "pattern": "^[a-z]{1,3}$"},
        "k": {"enum": ["cat", "dog", "fox"]},
        "o": {
            "type": "object",
            "properties": {"i": {"type": "string", "pattern": "^[A-Z][0-9]$"}, "v": {"type": "boolean"}},
            "required": ["i", "v"],
            "additionalProperties": False,
        },
        "t": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1, "maxItems": 2},
    },
    "required": ["n", "k", "o", "t"],
    "additionalProperties": False,
}
MAX_TOKENS = 80
REGEX = r"[0-9]{3}-[a-c]{1,8}"
CHOICES = ["yes", "no", "maybe later", "I don't know"]


def json_params(**kw) -> SamplingParams:
    so = StructuredOutputsParams(json=SCHEMA, disable_any_whitespace=True)
    return SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, structured_outputs=so, **kw)


def assert_valid_json(outputs) -> int:
    count = 0
    for out in outputs:
        assert out.error is None
        for c in out.outputs:
            assert c.finish_reason == "stop", (c.text, c.finish_reason)
            jsonschema.validate(json.loads(c.text), SCHEMA)
            count += 1
    return count


@pytest.fixture(scope="module")
def llm(llama_checkpoint: str) -> LLM:
    return LLM(llama_checkpoint, device="cpu", max_model_len=256, num_gpu_blocks_override=1600, max_num_seqs=256)


def test_thousand_json_schema_samples_all_validate(llm: LLM) -> None:
    prompts = [f"Pet {i}:" for i in range(125)]
    outputs = llm.generate(prompts, json_params(n=8), use_tqdm=False)
    assert assert_valid_json(outputs) == 1000
    texts = {c.text for o in outputs for c in o.outputs}
    assert len(texts) > 100  # sampled, not one forced string


def test_regex_and_choice_outputs_all_match(llm: LLM) -> None:
    regex = SamplingParams(temperature=1.0, max_tokens=32,
                           structured_outputs=StructuredOutputsParams(regex=REGEX))
    choice = SamplingParams(temperature=1.0, max_tokens=32,
                            structured_outputs=StructuredOutputsParams(choice=CHOICES))
    outputs = llm.generate([f"prompt {i}" for i in range(100)], [regex, choice] * 50, use_tqdm=False)
    for i, out in enumerate(outputs):
        text = out.outputs[0].text
        if i % 2 == 0:
            assert re.fullmatch(REGEX, text), text
        else:
            assert text in CHOICES, text
    assert {o.outputs[0].text for o in outputs[1::2]} == set(CHOICES)  # all reachable, none else


def test_mixed_batch_leaves_unconstrained_requests_alone(llm: LLM) -> None:
    plain = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    alone = llm.generate(["hello there"], plain, use_tqdm=False)[0].outputs[0].token_ids
    mixed = llm.generate(["hello there", "x"], [plain, json_params()], use_tqdm=False)
    assert mixed[0].outputs[0].token_ids == alone
    assert_valid_json(mixed[1:])


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_json_under_chunked_prefill_prefix_cache_and_preemption(llama_checkpoint: str, async_scheduling: bool) -> None:
    # 16 blocks of 16 tokens for 8 sequences with ~70-token prompts: requests get preempted;
    # 32-token steps split each prompt into chunks; the shared prompt prefix hits the cache.
    llm = LLM(llama_checkpoint, device="cpu", max_model_len=256, num_gpu_blocks_override=16,
              max_num_batched_tokens=32, max_num_seqs=8, async_scheduling=async_scheduling)
    prefix = "The quick brown fox jumps over the lazy dog. " * 5
    outputs = llm.generate([prefix + f"Pet {i}:" for i in range(4)], json_params(n=2), use_tqdm=False)
    assert assert_valid_json(outputs) == 8
    stats = llm.llm_engine.get_stats()
    assert stats.num_preemptions_total > 0
    assert stats.prefix_cache_hits_total > 0
    assert stats.num_free_blocks == stats.num_total_blocks  # nothing leaked


def test_invalid_constraints_raise_before_queueing(llm: LLM) -> None:
    bad = [
        ({"json": {"type": "object", "properties": {"a": {"type": "strnig"}}}}, "json"),
        ({"json": "{not json"}, "json"),
        ({"regex": "a(b"}, "regex"),
        ({"grammar": "root ::= undefined_rule"}, "grammar"),
    ]
    for spec, field in bad:
        with pytest.raises(ValueError, match=f"structured_outputs.{field}"):
            llm.generate("x", SamplingParams(structured_outputs=StructuredOutputsParams(**spec)), use_tqdm=False)
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(json=SCHEMA, regex="a")
    with pytest.raises(ValueError, match="does not support"):
        SamplingParams(structured_outputs={"json": SCHEMA, "whitespace_patern": " "})
    assert not llm.llm_engine.has_unfinished_requests()


def test_grammar_compiling_does_not_block_other_requests(llm: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = llm.llm_engine
    manager = engine.engine_core.structured_output
    release = threading.Event()
    compile_once = manager._compile

    def slow_compile(*args):
        release.wait(30)
        return compile_once(*args)

    monkeypatch.setattr(manager, "_compile", slow_compile)
    slow = SamplingParams(temperature=1.0, max_tokens=40,
                          structured_outputs=StructuredOutputsParams(regex="[a-z]{1,5}-slow"))
    engine.add_request("slow", "a", slow)
    engine.add_request("plain", "b", SamplingParams(max_tokens=5, ignore_eos=True))
    done = {}
    while "plain" not in done:
        done.update({o.request_id: o for o in engine.step() if o.finished})
    (waiting,) = engine.engine_core.scheduler.waiting
    assert waiting.status == RequestStatus.WAITING_FOR_GRAMMAR
    release.set()
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert re.fullmatch("[a-z]{1,5}-slow", done["slow"].outputs[0].text)


def test_a_grammar_at_its_end_stops_under_min_tokens(llm: LLM) -> None:
    """min_tokens past every choice's end: once the grammar is complete it allows only stop
    tokens, which min_tokens bans; as vLLM (PR 54218) the stop token survives where banning
    it would leave no token, so the request stops with the choice (it ended in error), while
    min_tokens still bans EOS on rows where other tokens remain."""
    choices = ["yes", "no"]
    params = SamplingParams(temperature=0.0, max_tokens=16, min_tokens=12,
                            structured_outputs=StructuredOutputsParams(choice=choices))
    out = llm.generate(["Answer:"], params, use_tqdm=False)[0].outputs[0]
    assert (out.finish_reason, out.text in choices) == ("stop", True)
    plain = llm.generate(["Answer:"], SamplingParams(temperature=0.0, max_tokens=16, min_tokens=12), use_tqdm=False)
    assert len(plain[0].outputs[0].token_ids) >= 12  # no grammar: min_tokens holds EOS off as before


def test_a_grammar_other_settings_contradict_ends_with_a_message_that_says_so(llm: LLM) -> None:
    """allowed_token_ids that exclude every token the grammar allows: the request ends in
    error with a message naming the settings that can do that (it said "internal error"),
    and the engine serves the next request."""
    tok = llm.get_tokenizer()
    outside = next(t for t in range(tok.vocab_size) if tok.decode([t]).strip() not in ("", "y", "n", "ye", "yes", "no"))
    params = SamplingParams(temperature=0.0, max_tokens=16, allowed_token_ids=[outside],
                            structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
    out = llm.generate(["Answer:"], params, use_tqdm=False)[0]
    assert out.outputs[0].finish_reason == "error"
    assert "allowed_token_ids" in out.error and "internal error" not in out.error
    ok = SamplingParams(temperature=0.0, max_tokens=16, structured_outputs=StructuredOutputsParams(choice=["yes", "no"]))
    assert llm.generate(["Answer:"], ok, use_tqdm=False)[0].outputs[0].text in ("yes", "no")


def test_vllm_structured_outputs_fields_known() -> None:
    """vLLM's other StructuredOutputsParams fields are known: disable_additional_properties is
    taken (xgrammar keeps objects to their properties either way); whitespace_pattern is refused
    with a ValueError naming it, never a TypeError (structural_tag: test_structural_tag.py)."""
    params = StructuredOutputsParams(json={"type": "object"}, disable_additional_properties=True)
    assert params.kind == "json" and StructuredOutputsParams.from_dict(params.to_dict()) == params
    with pytest.raises(ValueError, match="structured_outputs.whitespace_pattern is not supported"):
        SamplingParams(structured_outputs={"json": {"type": "object"}, "whitespace_pattern": " "})
    with pytest.raises(ValueError, match="disable_additional_properties must be true or false"):
        StructuredOutputsParams(json={}, disable_additional_properties="yes")
