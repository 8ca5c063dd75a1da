"""Request fields that ask for structured output -> one StructuredOutputsParams.

OpenAI's ``response_format`` (json_object, json_schema) and vLLM's ``structural_tag`` type,
vLLM's ``structured_outputs`` extra and its older ``guided_json / guided_regex / guided_choice /
guided_grammar / structural_tag``. At most one may be given; each problem is a 400 that names
the field.
"""

from __future__ import annotations

import json
from typing import Any

from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.sampling_params import StructuredOutputsParams
from pagedlm.structured_output.validate import InvalidStructuredOutputError, validate_structured_outputs

_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar",
           "structural_tag": "structural_tag"}
_TAG_FIELDS = ("structures", "triggers", "format")


def response_format_params(response_format: Any) -> StructuredOutputsParams | None:
    kind = response_format.type
    if kind == "structural_tag":
        return StructuredOutputsParams(structural_tag=structural_tag_payload(response_format))
    stray = [f for f in _TAG_FIELDS if getattr(response_format, f) is not None]
    if stray:
        raise OpenAIError(f"response_format.{stray[0]} applies to type 'structural_tag' only, not {kind!r}", 400,
                          "response_format")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        spec = response_format.json_schema or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise OpenAIError("response_format.json_schema.schema must be a JSON schema object", 400,
                              "response_format")
        return StructuredOutputsParams(json=schema)
    raise OpenAIError(f"response_format type {kind!r} is not supported; use 'text', 'json_object', "
                      "'json_schema' or 'structural_tag'", 400, "response_format")


def structural_tag_payload(response_format: Any) -> str:
    """response_format type structural_tag -> StructuredOutputsParams.structural_tag's JSON text:
    vLLM's {structures, triggers} or xgrammar's {format}, exactly one of the two shapes."""
    legacy = response_format.structures is not None or response_format.triggers is not None
    if legacy == (response_format.format is not None):
        raise OpenAIError("response_format type 'structural_tag' takes either 'structures' and 'triggers' or "
                          "'format'", 400, "response_format")
    if legacy:
        body = {"type": "structural_tag", "structures": response_format.structures,
                "triggers": response_format.triggers}
    else:
        body = {"type": "structural_tag", "format": response_format.format}
    return json.dumps(body, ensure_ascii=False)


def request_structured_outputs(request: Any) -> StructuredOutputsParams | None:
    """The constraint a completion or chat request asks for (None: unconstrained)."""
    found: list[tuple[str, StructuredOutputsParams]] = []
    try:
        if request.response_format is not None:
            params = response_format_params(request.response_format)
            if params is not None:
                found.append(("response_format", params))
        if request.structured_outputs is not None:
            found.append(("structured_outputs", StructuredOutputsParams.from_dict(request.structured_outputs)))
        for name, kind in _GUIDED.items():
            value = getattr(request, name)
            if value is not None:
                found.append((name, StructuredOutputsParams(**{kind: value})))
    except ValueError as e:
        raise OpenAIError(str(e), 400, "structured_outputs") from e
    if len(found) > 1:
        raise OpenAIError(f"give only one structured output constraint; got {[n for n, _ in found]}", 400, found[1][0])
    if not found:
        return None
    name, params = found[0]
    check(params, name)
    return params


def check(params: StructuredOutputsParams, param: str) -> None:
    """Compile-check now, so the answer is a 400 before anything is queued or streamed."""
    try:
        validate_structured_outputs(params)
    except InvalidStructuredOutputError as e:
        raise OpenAIError(f"{param}: {e}", 400, param) from e
