"""Frontend checks of a StructuredOutputsParams: each spec is parsed into an xgrammar Grammar
(no tokenizer needed, microseconds for usual schemas) so an invalid schema, regex, grammar or
structural tag is refused with a message naming the problem before the request reaches the
engine core."""

from __future__ import annotations

import json
import re
from typing import Any

from pagedlm.sampling_params import StructuredOutputsParams

# xgrammar prefixes its messages with "[hh:mm:ss] /path/file.cc:123: "; users need the rest.
_LOG_PREFIX = re.compile(r"^\[[\d:]+\]\s+\S+:\d+:\s*")


class InvalidStructuredOutputError(ValueError):
    """The constraint cannot be compiled; the message names the field and the problem."""


def clean_message(error: BaseException) -> str:
    lines = [_LOG_PREFIX.sub("", line).strip() for line in str(error).strip().splitlines()]
    return " ".join(line for line in lines if line)


def schema_text(schema: str | dict) -> str:
    """A JSON schema given as an object or as JSON text -> canonical JSON text."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise InvalidStructuredOutputError(f"structured_outputs.json is not valid JSON: {e}") from e
    if not isinstance(schema, (dict, bool)):
        raise InvalidStructuredOutputError(
            f"structured_outputs.json must be a JSON schema object, got {type(schema).__name__}")
    # Key order is kept: xgrammar emits properties in schema order (tool calls: name first).
    return json.dumps(schema, ensure_ascii=False)


def choice_ebnf(choices: list[str]) -> str:
    # JSON string escapes (\", \\, \n, \t, \uXXXX) are also valid EBNF string escapes in xgrammar.
    return "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)


def grammar_spec(params: StructuredOutputsParams) -> tuple[str, str]:
    """(kind, canonical spec text): the compile cache key, and what the backend compiles."""
    kind = params.kind
    if kind == "json":
        return "json", schema_text(params.json)
    if kind == "json_object":
        return "json_object", ""
    if kind == "choice":
        return "grammar", choice_ebnf(params.choice)
    if kind == "grammar":
        return ("grammar" if "::=" in params.grammar else "lark"), params.grammar
    if kind == "structural_tag":
        from pagedlm.structured_output.structural_tag import structural_tag_text

        return kind, structural_tag_text(params.structural_tag)
    return kind, getattr(params, kind)


def validate_structured_outputs(params: StructuredOutputsParams) -> None:
    """Raises InvalidStructuredOutputError when the constraint cannot compile."""
    import xgrammar as xgr

    kind, spec = grammar_spec(params)
    if kind == "json":
        _check_json_schema(json.loads(spec))
    if kind == "structural_tag":
        from pagedlm.structured_output.structural_tag import FIELD, json_schemas

        for schema in json_schemas(spec):
            _check_json_schema(schema, FIELD)
    builders: dict[str, Any] = {
        "json": lambda: xgr.Grammar.from_json_schema(spec, any_whitespace=not params.disable_any_whitespace),
        "json_object": lambda: None,
        "regex": lambda: xgr.Grammar.from_regex(spec),
        "grammar": lambda: xgr.Grammar.from_ebnf(spec),
        "lark": lambda: xgr.Grammar.from_lark(spec),
        "structural_tag": lambda: xgr.Grammar.from_structural_tag(spec),
    }
    field = {"lark": "grammar"}.get(kind, params.kind)
    try:
        builders[kind]()
    except Exception as e:  # noqa: BLE001 - xgrammar raises RuntimeError/ValueError with the reason
        raise InvalidStructuredOutputError(f"structured_outputs.{field} is invalid: {clean_message(e)}") from e


def _check_json_schema(schema: Any, field: str = "structured_outputs.json") -> None:
    """The schema must itself be a valid JSON schema (draft 2020-12 meta-schema)."""
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise InvalidStructuredOutputError(f"{field} is not a valid JSON schema at {where}: {e.message}") from e
