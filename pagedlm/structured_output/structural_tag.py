"""Structural tags (vLLM's ``structural_tag``): free text until a trigger appears, then the
structure that trigger begins (its ``begin``, a JSON body its schema constrains, its ``end``),
then free text again.

Two spellings reach us, as in vLLM: the original ``{"structures": [{"begin", "schema", "end"}],
"triggers": [...]}`` and xgrammar's ``{"type": "structural_tag", "format": {...}}``. Both become
the format form's JSON text (the compile cache key, and what xgrammar compiles), so a tag means
one thing whichever way it was written. The checks here are pure JSON (no xgrammar, no
tokenizer): the engine core runs them again when it reads the spec.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from pagedlm.structured_output.validate import InvalidStructuredOutputError

FIELD = "structured_outputs.structural_tag"
_LEGACY_KEYS = {"type", "structures", "triggers"}
_FORMAT_KEYS = {"type", "format"}
_STRUCTURE_KEYS = {"begin", "schema", "end"}


def _bad(why: str) -> InvalidStructuredOutputError:
    return InvalidStructuredOutputError(f"{FIELD} is invalid: {why}")


def structural_tag_text(tag: str | dict) -> str:
    """A structural tag in either spelling -> the format form's canonical JSON text."""
    if isinstance(tag, str):
        try:
            tag = json.loads(tag)
        except json.JSONDecodeError as e:
            raise _bad(f"not valid JSON ({e})") from e
    if not isinstance(tag, dict):
        raise _bad(f"it must be a JSON object, got {type(tag).__name__}")
    if tag.get("type", "structural_tag") != "structural_tag":
        raise _bad(f"type must be 'structural_tag', got {tag.get('type')!r}")
    if "format" in tag:
        _refuse_unknown(tag, _FORMAT_KEYS, "")
        if not isinstance(tag["format"], dict):
            raise _bad("format must be an object such as {'type': 'triggered_tags', ...}")
        for node in _nodes(tag["format"]):
            if node.get("type") == "triggered_tags":
                _check_triggers(node.get("triggers"), [t.get("begin") for t in node.get("tags") or []
                                                       if isinstance(t, dict)], "format")
        return json.dumps({"type": "structural_tag", "format": tag["format"]}, ensure_ascii=False)
    if "structures" not in tag or "triggers" not in tag:
        raise _bad("give 'structures' and 'triggers' (vLLM's form) or 'format' (xgrammar's form)")
    _refuse_unknown(tag, _LEGACY_KEYS, "")
    return json.dumps(_legacy_to_format(tag["structures"], tag["triggers"]), ensure_ascii=False)


def _legacy_to_format(structures: Any, triggers: Any) -> dict:
    if not isinstance(structures, list) or not structures:
        raise _bad("structures must be a non-empty list of {begin, schema, end}")
    tags = []
    for i, s in enumerate(structures):
        where = f"structures[{i}]"
        if not isinstance(s, dict):
            raise _bad(f"{where} must be an object with begin, schema and end")
        missing = sorted(_STRUCTURE_KEYS - set(s))
        if missing:
            raise _bad(f"{where} lacks {missing}")
        _refuse_unknown(s, _STRUCTURE_KEYS, where + ".")
        if not isinstance(s["begin"], str) or not s["begin"]:
            raise _bad(f"{where}.begin must be a non-empty string")
        if not isinstance(s["end"], str):
            raise _bad(f"{where}.end must be a string")
        if not isinstance(s["schema"], (dict, bool)):
            raise _bad(f"{where}.schema must be a JSON schema object")
        tags.append({"type": "tag", "begin": s["begin"],
                     "content": {"type": "json_schema", "json_schema": s["schema"]}, "end": s["end"]})
    _check_triggers(triggers, [t["begin"] for t in tags], "structures")
    return {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": triggers, "tags": tags}}


def _check_triggers(triggers: Any, begins: list[Any], where: str) -> None:
    """Each trigger starts some begin and each begin starts with a trigger (xgrammar fails an
    internal check on a trigger that begins nothing, with no message a user could act on)."""
    if not isinstance(triggers, list) or not triggers or not all(isinstance(t, str) and t for t in triggers):
        raise _bad("triggers must be a non-empty list of non-empty strings")
    texts = [b for b in begins if isinstance(b, str)]
    for trigger in triggers:
        if not any(b.startswith(trigger) for b in texts):
            raise _bad(f"trigger {trigger!r} is not a prefix of any begin in {where} ({texts})")
    for begin in texts:
        if not any(begin.startswith(t) for t in triggers):
            raise _bad(f"begin {begin!r} starts with none of the triggers {triggers}")


def _refuse_unknown(obj: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise _bad(f"unknown keys {[where + k for k in unknown]}; known: {sorted(known)}")


def _nodes(node: Any) -> Iterator[dict]:
    """Every format object inside a format (depth first)."""
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key not in ("json_schema",):  # a schema's own objects are not formats
                yield from _nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _nodes(item)


def json_schemas(format_text: str) -> Iterator[Any]:
    """The JSON schemas inside a canonical tag (each is checked against the meta-schema)."""
    for node in _nodes(json.loads(format_text)["format"]):
        if node.get("type") in ("json_schema", "qwen_xml_parameter") and "json_schema" in node:
            yield node["json_schema"]
