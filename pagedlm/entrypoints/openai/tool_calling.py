"""Tools and reasoning for the chat (and responses) endpoints.

``plan_tools`` checks ``tools`` / ``tool_choice`` and says how calls are produced:
- ``none``: the template sees the tools; the output is text.
- ``auto``: the model decides; ``--tool-call-parser`` finds the calls in its text.
- ``required`` / a named function: a JSON-schema constraint makes the output a valid call
  (a list of ``{"name", "parameters"}`` / the named function's arguments), so the arguments
  always parse and match the function's schema.

``ChoiceShaper`` turns one choice's text into the message (``content``, ``reasoning_content``,
``tool_calls``) or, streaming, into deltas; both come from the same parse of the text so far,
so streamed fragments concatenate to the non-streamed message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagedlm.entrypoints.openai.errors import OpenAIError
from pagedlm.entrypoints.openai.reasoning import ReasoningParser, get_reasoning_parser
from pagedlm.entrypoints.openai.structured import check
from pagedlm.entrypoints.openai.tool_parsers import ToolParser, get_tool_parser
from pagedlm.entrypoints.openai.tool_parsers.base import ToolParser as _Base
from pagedlm.entrypoints.openai.tool_parsers.json_scan import PartialCall, scan_call_array, skip_ws
from pagedlm.sampling_params import StructuredOutputsParams


@dataclass(frozen=True)
class ServingOptions:
    """Server flags that shape chat outputs."""

    enable_auto_tool_choice: bool = False
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    chat_template_content_format: str = "auto"  # chat_content.CONTENT_FORMATS
    response_role: str = "assistant"  # a chat reply's role after a generation prompt
    force_include_usage: bool = False  # streams end with usage even without stream_options.include_usage
    return_tokens_as_token_ids: bool = False  # logprobs name tokens "token_id:N", not by their text

    def check(self) -> None:
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("--enable-auto-tool-choice needs --tool-call-parser")
        if self.tool_call_parser is not None:
            get_tool_parser(self.tool_call_parser)
        if self.reasoning_parser is not None:
            get_reasoning_parser(self.reasoning_parser)


@dataclass
class ToolPlan:
    mode: str = "none"  # none | auto | required | named
    function_name: str | None = None
    constraint: StructuredOutputsParams | None = None
    parallel: bool = True
    keep_special_tokens: bool = False  # auto: the tool parser reads markers that are special tokens
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> parameters' schema


def _function_specs(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise OpenAIError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., "
                              "'parameters': {...}}}}; only function tools are supported", 400, f"tools[{i}]")
        parameters = function.get("parameters") or {"type": "object"}
        if not isinstance(parameters, dict):
            raise OpenAIError(f"tools[{i}].function.parameters must be a JSON schema object", 400, f"tools[{i}]")
        specs[function["name"]] = parameters
    return specs


def plan_tools(tools: list[dict[str, Any]] | None, tool_choice: Any, parallel_tool_calls: bool | None,
               options: ServingOptions) -> ToolPlan:
    specs = _function_specs(tools or [])
    if tool_choice is None:
        tool_choice = "auto" if tools else "none"
    parallel = parallel_tool_calls is not False
    if tool_choice == "none":
        return ToolPlan()
    if not tools:
        raise OpenAIError(f"tool_choice {tool_choice!r} needs tools", 400, "tool_choice")
    if tool_choice == "auto":
        if not options.enable_auto_tool_choice:
            raise OpenAIError('"auto" tool choice needs the server to run with --enable-auto-tool-choice and '
                              '--tool-call-parser; or use tool_choice "required", a named function, or "none"',
                              400, "tool_choice")
        return ToolPlan("auto", parallel=parallel,
                        keep_special_tokens=get_tool_parser(options.tool_call_parser).keep_special_tokens,
                        tools=specs)
    named = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if tool_choice == "required":
        plan = ToolPlan("required", constraint=StructuredOutputsParams(json=_required_schema(specs, parallel)),
                        parallel=parallel)
    elif isinstance(named, dict) and isinstance(named.get("name"), str):
        name = named["name"]
        if name not in specs:
            raise OpenAIError(f"tool_choice names function {name!r}, which is not in tools", 400, "tool_choice")
        plan = ToolPlan("named", name, StructuredOutputsParams(json=specs[name]), parallel)
    else:
        raise OpenAIError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                          "{'name': ...}}", 400, "tool_choice")
    check(plan.constraint, "tools")
    return plan


_DEFS_KEYS = ("$defs", "definitions")


def _required_schema(specs: dict[str, dict[str, Any]], parallel: bool) -> dict[str, Any]:
    # "name" first in each item: xgrammar emits properties in schema order, so a stream
    # learns the function's name before its arguments.
    # A tool's "#/$defs/X" refs (pydantic schemas) point at its parameters' root; inside the
    # array they resolve from the array's root, so each tool's $defs / definitions move there
    # (as vLLM's), and two tools defining one name differently are refused.
    hoisted: dict[str, dict[str, Any]] = {}
    items = []
    for name, params in specs.items():
        params = dict(params)
        for key in _DEFS_KEYS:
            defs = params.pop(key, None)
            if defs is None:
                continue
            if not isinstance(defs, dict):
                raise OpenAIError(f"tools: function {name!r}: parameters.{key} must be an object", 400, "tools")
            merged = hoisted.setdefault(key, {})
            for def_name, def_schema in defs.items():
                if merged.setdefault(def_name, def_schema) != def_schema:
                    raise OpenAIError(f"tools: {key}/{def_name} is defined differently by two tools; tool_choice "
                                      f"{'required'!r} needs one definition per name", 400, "tools")
        items.append({"type": "object", "properties": {"name": {"type": "string", "enum": [name]},
                                                       "parameters": params},
                      "required": ["name", "parameters"], "additionalProperties": False})
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if not parallel:
        schema["maxItems"] = 1
    schema.update(hoisted)
    return schema


class _RequiredParser(_Base):
    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        calls, _ = scan_call_array(text, skip_ws(text, 0))
        return self.finish(None, calls, text, final)


class _NamedParser(_Base):
    def __init__(self, name: str) -> None:
        self.name = name

    def parse(self, text: str, final: bool) -> tuple[str | None, list[PartialCall]]:
        return None, [PartialCall(self.name, text, complete=final)]


def tool_call_id() -> str:
    return _Base.new_call_id()


@dataclass
class _Sent:
    reasoning: str = ""
    content: str = ""
    names: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


class ChoiceShaper:
    """One choice's output text -> message or stream deltas (content, reasoning, tool calls)."""

    def __init__(self, plan: ToolPlan, options: ServingOptions, prompt_text: str | None,
                 include_reasoning: bool = True) -> None:
        """``include_reasoning`` false: the reasoning is parsed out of the content and dropped."""
        self.plan = plan
        self.include_reasoning = include_reasoning
        self.reasoning: ReasoningParser | None = None
        if options.reasoning_parser is not None:
            self.reasoning = get_reasoning_parser(options.reasoning_parser)(prompt_text)
        self.tools: ToolParser | None = None
        # Ids in the shape the model's chat template accepts back (Mistral's: 9 alphanumerics),
        # whichever way the calls were produced.
        self._new_id = (get_tool_parser(options.tool_call_parser).new_call_id
                        if options.tool_call_parser is not None else tool_call_id)
        if plan.mode == "auto":
            self.tools = get_tool_parser(options.tool_call_parser)(plan.tools)
            self.tools.set_prompt(prompt_text)
        elif plan.mode == "required":
            self.tools = _RequiredParser()
        elif plan.mode == "named":
            self.tools = _NamedParser(plan.function_name)
        self._sent = _Sent()
        self.text = ""  # a stream's text so far (outputs arrive as deltas)

    @property
    def plain(self) -> bool:
        return self.reasoning is None and self.tools is None

    def parse(self, text: str, final: bool) -> tuple[str | None, str | None, list[PartialCall]]:
        """-> (reasoning, content, calls) of the text so far."""
        reasoning, content = self.reasoning.split(text, final) if self.reasoning is not None else (None, text)
        calls: list[PartialCall] = []
        if self.tools is not None and self.tools.whole_output:
            # (gpt-oss's harmony: the parser tells the channels apart itself)
            content, calls = self.tools.parse(text, final)
        elif self.tools is not None and (content is not None or final or self.plan.mode == "named"):
            content, calls = self.tools.parse(content or "", final)
        if not self.plan.parallel:
            calls = calls[:1]
        return reasoning, content, calls

    def message(self, text: str) -> dict[str, Any]:
        reasoning, content, calls = self.parse(text, final=True)
        message: dict[str, Any] = {"role": "assistant", "content": content if (content or not calls) else None,
                                   "refusal": None, "tool_calls": [self._call_entry(i, c) for i, c in enumerate(calls)]}
        if self.reasoning is not None:
            # Under both names: current vLLM's ``reasoning`` and ``reasoning_content`` (its older
            # name, which DeepSeek-style clients read).
            message["reasoning"] = message["reasoning_content"] = reasoning if self.include_reasoning else None
        elif message["content"] is None and not calls:
            message["content"] = ""  # (a reply that is all reasoning keeps null content, as vLLM's)
        return message

    def _call_entry(self, index: int, call: PartialCall) -> dict[str, Any]:
        return {"id": self._id(index, call.id), "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or ""}}

    def _id(self, index: int, written: str | None = None) -> str:
        """The call's id: the one the model wrote, else a new one (kept for the later deltas)."""
        while len(self._sent.ids) <= index:
            self._sent.ids.append(written if written and len(self._sent.ids) == index else self._new_id())
        return self._sent.ids[index]

    def finish_reason(self, reason: str | None, text: str) -> str | None:
        if reason == "stop" and self.plan.mode in ("auto", "required") and self.parse(text, True)[2]:
            return "tool_calls"
        return reason

    def feed(self, piece: str, final: bool) -> dict[str, Any]:
        """Streaming with delta outputs: append the new text, then as delta()."""
        self.text += piece
        return self.delta(self.text, final)

    def delta(self, text: str, final: bool) -> dict[str, Any]:
        """What is new since the last delta (only growth is sent: a stream cannot retract)."""
        reasoning, content, calls = self.parse(text, final)
        sent, out = self._sent, {}
        if (self.include_reasoning and reasoning and reasoning.startswith(sent.reasoning)
                and len(reasoning) > len(sent.reasoning)):
            out["reasoning"] = out["reasoning_content"] = reasoning[len(sent.reasoning):]
            sent.reasoning = reasoning
        if content and content.startswith(sent.content) and len(content) > len(sent.content):
            out["content"], sent.content = content[len(sent.content):], content
        entries = [e for i, c in enumerate(calls) if (e := self._call_delta(i, c)) is not None]
        if entries:
            out["tool_calls"] = entries
        return out

    def _call_delta(self, index: int, call: PartialCall) -> dict[str, Any] | None:
        sent = self._sent
        arguments = call.arguments or ""
        if index == len(sent.names):  # first sight: id, type and name, then argument fragments
            sent.names.append(call.name)
            sent.arguments.append(arguments)
            return {"index": index, "id": self._id(index, call.id), "type": "function",
                    "function": {"name": call.name, "arguments": arguments}}
        if index > len(sent.names) or not arguments.startswith(sent.arguments[index]):
            return None
        fragment = arguments[len(sent.arguments[index]):]
        if not fragment:
            return None
        sent.arguments[index] = arguments
        return {"index": index, "function": {"arguments": fragment}}


def add_tool_constraint(params: Any, plan: ToolPlan, options: ServingOptions | None = None) -> None:
    """required / named tool choice: the call's JSON schema becomes the request's constraint.
    auto: special tokens stay in the text when the tool parser's markers may be ones; so they
    do, whatever the tool choice, when the reasoning parser's markers are ones."""
    if plan.keep_special_tokens or (options is not None and options.reasoning_parser is not None
                                    and get_reasoning_parser(options.reasoning_parser).keep_special_tokens):
        params.skip_special_tokens = False
    if plan.constraint is None:
        return
    if params.structured_outputs is not None:
        raise OpenAIError(f"tool_choice {plan.mode!r} already constrains the output; remove response_format / "
                          "structured_outputs", 400, "tool_choice")
    params.structured_outputs = plan.constraint
