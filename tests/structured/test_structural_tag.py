"""Structural tags offline (vLLM's ``structural_tag``): free text until a trigger, then the
structure it begins (begin, a JSON body its schema constrains, end), then free text again.

The checkpoint has random weights, so it writes a structure only when pushed: ``logit_bias``
makes the trigger ``<`` likely, and from there only the grammar can make each body parse and
validate at temperature 1."""

from __future__ import annotations

import json
import re

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("xgrammar")

from pagedlm import LLM, SamplingParams  # noqa: E402
from pagedlm.sampling_params import StructuredOutputsParams  # noqa: E402
from pagedlm.structured_output.validate import grammar_spec  # noqa: E402

PET = {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]},
                                        "age": {"type": "integer", "minimum": 0, "maximum": 20}},
       "required": ["kind", "age"], "additionalProperties": False}
TRIGGER, BEGIN, END = "<", "<pet>", "</pet>"
LEGACY = {"type": "structural_tag", "structures": [{"begin": BEGIN, "schema": PET, "end": END}], "triggers": [TRIGGER]}
FORMAT = {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": [TRIGGER], "tags": [
    {"type": "tag", "begin": BEGIN, "content": {"type": "json_schema", "json_schema": PET}, "end": END}]}}
# xgrammar's format form says more: here at most one whitespace character in a row in the body
# (a random model otherwise rambles in whitespace).
TIGHT = json.loads(json.dumps(FORMAT))
TIGHT["format"]["tags"][0]["content"]["max_whitespace_cnt"] = 1


def tag_params(tag: dict = LEGACY, **kw) -> SamplingParams:
    so = StructuredOutputsParams(structural_tag=json.dumps(tag))
    return SamplingParams(temperature=1.0, structured_outputs=so, **kw)


def structures(text: str, finish_reason: str) -> list[tuple[dict, str]]:
    """(body, body text) of the complete structures in text; asserts every trigger begins one
    and only a cut-off output (finish_reason length) may end inside one."""
    bodies, pos = [], 0
    while (start := text.find(TRIGGER, pos)) != -1:
        rest = text[start:]
        if not rest.startswith(BEGIN):
            assert BEGIN.startswith(rest) and finish_reason == "length", (text, finish_reason)
            break
        try:
            body, end = json.JSONDecoder().raw_decode(text, start + len(BEGIN))  # no space before the body
        except json.JSONDecodeError:
            assert finish_reason == "length", (text, finish_reason)
            break
        jsonschema.validate(body, PET)
        if not text.startswith(END, end):
            assert END.startswith(text[end:]) and finish_reason == "length", (text, finish_reason)
            break
        bodies.append((body, text[start + len(BEGIN):end]))
        pos = end + len(END)
    return bodies


@pytest.fixture(scope="module")
def llm(llama_checkpoint: str) -> LLM:
    return LLM(llama_checkpoint, device="cpu", max_model_len=256, num_gpu_blocks_override=512, max_num_seqs=64)


@pytest.fixture(scope="module")
def trigger_bias(llm: LLM) -> dict[int, float]:
    (trigger_id,) = llm.get_tokenizer().encode(TRIGGER, add_special_tokens=False)
    return {trigger_id: 8.0}


def compiled_tag(llm: LLM, tag: dict):
    """The engine backend's compiled grammar of ``tag`` (xgrammar's CompiledGrammar)."""
    backend = llm.llm_engine.engine_core.structured_output
    backend._compile("json", "{}", True)  # builds the engine's backend (its tokenizer's vocabulary)
    return backend._backend.compile(*grammar_spec(tag_params(tag).structured_outputs), True)


@pytest.mark.parametrize("tag", [LEGACY, FORMAT], ids=["structures", "format"])
def test_the_compiled_grammar_allows_free_text_and_whole_structures_only(llm: LLM, tag: dict) -> None:
    compiled = compiled_tag(llm, tag)

    def accepts(text: str) -> bool:
        import xgrammar as xgr

        return xgr.GrammarMatcher(compiled).accept_string(text)

    assert accepts("any free text, even > and / and {")
    assert accepts('a <pet>{"kind": "cat", "age": 3}</pet> b <pet>{"age": 1}'[:35])  # inside a body: a prefix
    assert accepts('x <pet>{"kind": "dog", "age": 20}</pet> then text <pet>{"kind": "cat", "age": 0}</pet>!')
    for bad in ['<pet>{"kind": "cow", "age": 3}', '<pet>{"kind": "cat", "age": 21}', '<pet>{"age": 1}',
                '<pet>{"kind": "cat", "age": 3}x', "<cat>", '<pet> {"kind": "cat", "age": 3}']:
        assert not accepts(bad), bad


def test_every_trigger_in_sampled_outputs_begins_a_valid_structure(llm: LLM, trigger_bias: dict) -> None:
    params = tag_params(n=4, max_tokens=100, logit_bias=trigger_bias)
    outputs = llm.generate([f"Pet {i}:" for i in range(16)], params, use_tqdm=False)
    bodies = [b for o in outputs for c in o.outputs for b, _ in structures(c.text, c.finish_reason)]
    assert len(bodies) >= 16  # the bias makes structures common: the check above ran on many
    assert len({json.dumps(b) for b in bodies}) > 4  # sampled, not one forced body
    assert any(c.text and not c.text.startswith(TRIGGER) for o in outputs for c in o.outputs)  # free text too


def test_without_the_bias_outputs_are_free_text(llm: LLM) -> None:
    """The tag constrains nothing until a trigger: with the same seed, a prompt whose
    unconstrained sample the grammar accepts token by token (no ``<``; no special token or
    byte piece left outside valid text, which random weights write and free text excludes)
    gives the same tokens under the tag."""
    import xgrammar as xgr

    compiled = compiled_tag(llm, LEGACY)

    def grammar_accepts(token_ids: list[int]) -> bool:
        matcher = xgr.GrammarMatcher(compiled)
        return all(matcher.accept_token(t) for t in token_ids)

    plain = SamplingParams(temperature=1.0, max_tokens=20, seed=7, ignore_eos=True)
    tagged = tag_params(max_tokens=20, seed=7, ignore_eos=True)
    for i in range(8):
        free = llm.generate([f"Story {i}:"], plain, use_tqdm=False)[0].outputs[0]
        if TRIGGER not in free.text and grammar_accepts(free.token_ids):
            assert llm.generate([f"Story {i}:"], tagged, use_tqdm=False)[0].outputs[0].token_ids == free.token_ids
            return
    pytest.fail("no sample was free text the grammar accepts")


def test_format_form_with_async_scheduling_min_tokens_and_stop(llama_checkpoint: str, trigger_bias: dict) -> None:
    llm = LLM(llama_checkpoint, device="cpu", max_model_len=256, num_gpu_blocks_override=256, max_num_seqs=16,
              async_scheduling=True)
    params = tag_params(TIGHT, n=2, max_tokens=60, min_tokens=10, stop=["@@"], logit_bias=trigger_bias)
    outputs = llm.generate([f"Pet {i}:" for i in range(6)], params, use_tqdm=False)
    found = []
    for out in outputs:
        for c in out.outputs:
            assert (len(c.token_ids) >= 10 or c.finish_reason == "stop") and "@@" not in c.text
            found += structures(c.text, c.finish_reason)
    assert len(found) >= 6
    assert not any(re.search(r"\s\s", raw) for _, raw in found)  # the format's max_whitespace_cnt holds


@pytest.mark.parametrize("tag,message", [
    ("{not json", "not valid JSON"),
    ({"structures": [{"begin": BEGIN, "schema": PET}], "triggers": [TRIGGER]}, r"lacks \['end'\]"),
    ({"structures": [{"begin": BEGIN, "end": END}], "triggers": [TRIGGER]}, r"lacks \['schema'\]"),
    ({"structures": [{"schema": PET, "end": END}], "triggers": [TRIGGER]}, r"lacks \['begin'\]"),
    ({"structures": [{"begin": BEGIN, "schema": PET, "end": END}], "triggers": ["<x"]}, "not a prefix of any begin"),
    ({"structures": [{"begin": BEGIN, "schema": PET, "end": END}], "triggers": []}, "non-empty list"),
    ({"structures": [], "triggers": [TRIGGER]}, "non-empty list"),
    ({"structures": [{"begin": BEGIN, "schema": {"type": "strnig"}, "end": END}], "triggers": [TRIGGER]},
     "not a valid JSON schema"),
    ({"structures": [{"begin": BEGIN, "schema": PET, "end": END, "name": "x"}], "triggers": [TRIGGER]}, "unknown keys"),
    ({"type": "structural_tag", "format": {"type": "no_such_format"}}, "no_such_format"),
    ({"type": "regex", "format": {}}, "type must be 'structural_tag'"),
    ({"triggers": [TRIGGER]}, "give 'structures' and 'triggers'"),
])
def test_bad_structural_tags_raise_before_queueing(llm: LLM, tag, message: str) -> None:
    text = tag if isinstance(tag, str) else json.dumps(tag)
    with pytest.raises(ValueError, match=f"structured_outputs.structural_tag .*{message}"):
        llm.generate("x", SamplingParams(structured_outputs=StructuredOutputsParams(structural_tag=text)),
                     use_tqdm=False)
    assert not llm.llm_engine.has_unfinished_requests()


def test_one_constraint_per_request_and_no_compact_switch() -> None:
    with pytest.raises(ValueError, match="exactly one of .*structural_tag"):
        StructuredOutputsParams(json=PET, structural_tag=json.dumps(LEGACY))
    with pytest.raises(ValueError, match="disable_any_whitespace does not apply to structural_tag"):
        StructuredOutputsParams(structural_tag=json.dumps(LEGACY), disable_any_whitespace=True)
    with pytest.raises(ValueError, match="must be JSON text"):
        StructuredOutputsParams(structural_tag=3)
    params = StructuredOutputsParams(structural_tag=json.dumps(LEGACY))
    assert params.kind == "structural_tag" and StructuredOutputsParams.from_dict(params.to_dict()) == params
    # Both spellings are one grammar (one compile-cache entry).
    assert grammar_spec(params) == grammar_spec(StructuredOutputsParams(structural_tag=json.dumps(FORMAT)))
