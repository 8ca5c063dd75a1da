"""Walk every request-body field of every endpoint on the shared server: each one changes
the answer or is refused with a clear 400/404. One entry per field, per endpoint; a field
added to a request model without an entry fails test_every_field_has_an_entry.

The only field that is accepted and changes nothing is OpenAI's ``user`` (an end-user id for
the caller's own records, which OpenAI and vLLM also leave alone).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import httpx
import pytest
from e2e_helpers import MODEL_NAME

from pagedlm.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)

INFORMATIONAL = {"user"}
LOGPROB_TOKEN_IDS_TEST = ("tests/e2e/test_logprob_token_ids_server.py", "test_completions_values_match_offline")
ADD_SPECIAL_TOKENS_TEST = ("tests/e2e/test_app_inprocess.py", "test_add_special_tokens_reaches_the_tokenizer")
BOS, EOS, RBRACKET = 0, 4, 65  # token ids of the demo tokenizer: <|begin_of_text|>, <|eot_id|>, "]"


# Answers to identical bodies, shared by the walk: every request here is greedy or seeded, so
# the same body gets the same answer, and baselines are asked for once.
_ANSWERS: dict[str, httpx.Response] = {}


class Api:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        key = path + json.dumps(body, sort_keys=True)
        if key not in _ANSWERS:
            _ANSWERS[key] = self.http.post(path, json=body)
        return _ANSWERS[key]

    def cmpl(self, **patch: Any) -> httpx.Response:
        body = {"model": MODEL_NAME, "prompt": "Hello world, this is", "max_tokens": 8, "temperature": 0.0}
        return self.post("/v1/completions", {**body, **patch})

    def chat(self, **patch: Any) -> httpx.Response:
        body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
                "temperature": 0.0}
        return self.post("/v1/chat/completions", {**body, **patch})

    def tok(self, **patch: Any) -> httpx.Response:
        return self.post("/tokenize", {"model": MODEL_NAME, "prompt": "Hello world", **patch})


def text(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    return choice["text"] if "text" in choice else choice["message"]["content"]


def tokens(resp: httpx.Response) -> int:
    assert resp.status_code == 200, resp.text
    return resp.json()["usage"]["completion_tokens"]


def prompt_tokens(resp: httpx.Response) -> int:
    assert resp.status_code == 200, resp.text
    return resp.json()["usage"]["prompt_tokens"]


def refused(resp: httpx.Response, needle: str, status: int = 400) -> bool:
    return resp.status_code == status and needle.lower() in resp.json()["error"]["message"].lower()


def sse_events(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    return [json.loads(line[6:]) for line in resp.text.split("\n") if line.startswith("data: {")]


def sampled(call: Callable[..., httpx.Response], **patch: Any) -> str:
    return text(call(temperature=1.0, seed=7, **patch))


def _first_logprob_token(resp: httpx.Response) -> str:
    logprobs = resp.json()["choices"][0]["logprobs"]
    return logprobs["tokens"][0] if "tokens" in logprobs else logprobs["content"][0]["token"]


def _cached(resp: httpx.Response) -> int:
    assert resp.status_code == 200, resp.text
    return resp.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def _salted(call: Callable[..., httpx.Response], long_input: dict[str, Any]) -> bool:
    """The same long prompt hits the prefix cache under its own salt only."""
    import uuid

    salt, other = uuid.uuid4().hex, uuid.uuid4().hex
    return (_cached(call(**long_input, cache_salt=salt, max_tokens=1)) == 0
            and _cached(call(**long_input, cache_salt=salt, max_tokens=2)) >= 16
            and _cached(call(**long_input, cache_salt=other, max_tokens=1)) == 0
            and refused(call(cache_salt=""), "cache_salt"))


def _unsupported(call: Callable[..., httpx.Response], name: str, value: Any) -> Callable[[], bool]:
    return lambda: refused(call(**{name: value}), f"{name} is not supported")


def shared_fields(call: Callable[..., httpx.Response], long_input: dict[str, Any]) -> dict[str, Callable[[], bool]]:
    """SamplingFields: the same checks through either endpoint (``long_input``: a prompt of
    several KV blocks, in the endpoint's own field)."""
    greedy = lambda **p: text(call(**p))  # noqa: E731
    return {
        "model": lambda: refused(call(model="nope"), "does not exist", 404),
        "n": lambda: len(call(n=2, temperature=1.0).json()["choices"]) == 2,
        "max_tokens": lambda: tokens(call(max_tokens=3)) == 3,
        "temperature": lambda: sampled(call) != greedy(),
        "top_p": lambda: sampled(call, top_p=0.3) != sampled(call),
        "top_k": lambda: sampled(call, top_k=3) != sampled(call),
        "min_p": lambda: sampled(call, min_p=0.3) != sampled(call),
        "presence_penalty": lambda: greedy(presence_penalty=2.0) != greedy(),
        "frequency_penalty": lambda: greedy(frequency_penalty=2.0) != greedy(),
        "repetition_penalty": lambda: greedy(repetition_penalty=3.0) != greedy(),
        "logit_bias": lambda: greedy(logit_bias={str(RBRACKET): 100}) == "]" * 8,
        "seed": lambda: sampled(call) != text(call(temperature=1.0, seed=8)),
        "stop": lambda: greedy(stop=[greedy()[4:6]]) == greedy()[: greedy().index(greedy()[4:6])],
        "stream": lambda: len(sse_events(call(stream=True))) > 1,
        "stream_options": lambda: sse_events(call(stream=True, stream_options={"include_usage": True}))[-1]["usage"]
        is not None and all(e.get("usage") for e in sse_events(call(stream=True, stream_options={
            "include_usage": True, "continuous_usage_stats": True}))),
        "user": lambda: greedy(user="someone") == greedy(),
        # Structured outputs and tools: shown with a model that follows them, in the named tests.
        "response_format": lambda: _shown_by("tests/e2e/test_structured_server.py", "test_response_format_json_schema_after_reasoning"),
        "min_tokens": lambda: tokens(call(logit_bias={str(EOS): 100}, min_tokens=4)) == 5,
        "ignore_eos": lambda: tokens(call(logit_bias={str(EOS): 100}, ignore_eos=True)) == 8
        and tokens(call(logit_bias={str(EOS): 100})) == 1,
        "stop_token_ids": lambda: tokens(call(allowed_token_ids=[RBRACKET], stop_token_ids=[RBRACKET])) == 1,
        "skip_special_tokens": lambda: "<|begin_of_text|>" in greedy(allowed_token_ids=[BOS], skip_special_tokens=False)
        and "<|begin_of_text|>" not in greedy(allowed_token_ids=[BOS]),
        # Only a WordPiece-style decoder adds spaces: shown by the named detokenizer test, and
        # here it must reach SamplingParams.
        "spaces_between_special_tokens": lambda: _shown_by("tests/unit/test_detokenizer.py",
                                                           "test_spaces_between_special_tokens")
        and CompletionRequest(prompt="x", spaces_between_special_tokens=False).sampling_params(
            None, 1).spaces_between_special_tokens is False,
        "include_stop_str_in_output": lambda: greedy(stop=[greedy()[4:6]], include_stop_str_in_output=True).endswith(
            greedy()[4:6]),
        "allowed_token_ids": lambda: greedy(allowed_token_ids=[RBRACKET]) == "]" * 8,
        "bad_words": lambda: "]" not in greedy(allowed_token_ids=[RBRACKET, RBRACKET + 1], bad_words=["]"]),
        "prompt_logprobs": lambda: _prompt_logprobs(call),
        "use_beam_search": lambda: len({c.get("text", (c.get("message") or {}).get("content")) for c in call(
            use_beam_search=True, n=2).json()["choices"]}) == 2
        # the search's one-token step requests carry neither: refused with it, not dropped
        and refused(call(use_beam_search=True, n=2, repetition_detection={"max_pattern_size": 2, "min_count": 2}),
                    "cannot be combined with repetition_detection")
        and refused(call(use_beam_search=True, n=2, vllm_xargs={"k": 1}), "cannot be combined with vllm_xargs"),
        "length_penalty": lambda: refused(call(length_penalty=2.0), "beam search")
        and call(use_beam_search=True, n=2, length_penalty=2.0).status_code == 200,
        "best_of": lambda: refused(call(best_of=3), "best_of"),
        # The shared server is fcfs: a priority is refused there (0 is the default); with the
        # priority policy it reaches the engine core (the named test) and orders admission.
        "priority": lambda: refused(call(priority=1), "priority scheduling is not enabled")
        and greedy(priority=0) == greedy()
        and _shown_by("tests/e2e/test_app_inprocess.py", "test_priority_reaches_the_engine_core")
        and _shown_by("tests/unit/test_priority_scheduling.py", "test_priority_orders_admission_and_keeps_the_tokens"),
        "structured_outputs": lambda: _shown_by("tests/e2e/test_structured_server.py", "test_completions_guided_choice_and_structured_outputs_extra"),
        "guided_json": lambda: _shown_by("tests/e2e/test_structured_server.py", "test_completions_guided_choice_and_structured_outputs_extra"),
        "guided_regex": lambda: _shown_by("tests/e2e/test_structured_server.py", "test_completions_guided_choice_and_structured_outputs_extra"),
        "guided_choice": lambda: text(call(guided_choice=["yes", "no"])) in ("yes", "no"),
        "guided_grammar": lambda: _shown_by("tests/e2e/test_structured_server.py", "test_completions_guided_choice_and_structured_outputs_extra"),
        "guided_decoding_backend": lambda: refused(call(guided_decoding_backend="outlines"), "xgrammar")
        and text(call(guided_choice=["yes", "no"], guided_decoding_backend="xgrammar")) in ("yes", "no"),
        "truncate_prompt_tokens": lambda: prompt_tokens(call(truncate_prompt_tokens=2)) == 2
        and prompt_tokens(call(**long_input, truncate_prompt_tokens=-1)) == prompt_tokens(call(**long_input))
        and refused(call(truncate_prompt_tokens=0), "truncate_prompt_tokens"),
        "cache_salt": lambda: _salted(call, long_input),
        "return_tokens_as_token_ids": lambda: _first_logprob_token(_with_logprobs(call, return_tokens_as_token_ids=True))
        .startswith("token_id:") and not _first_logprob_token(_with_logprobs(call)).startswith("token_id:"),
        "return_token_ids": lambda: _token_ids_returned(call, greedy),
        "truncation_side": lambda: _truncated_from(call, long_input),
        "stream_interval": lambda: _chunked_by(call),
        "repetition_detection": lambda: refused(call(repetition_detection={"max_pattern_size": 2}), "min_count")
        and greedy(repetition_detection={"max_pattern_size": 0}) == greedy()
        and _shown_by("tests/unit/test_repetition_detection.py", "test_the_engine_stops_at_the_repetition"),
        "request_id": lambda: call(request_id="walk-7").json()["id"].endswith("-walk-7")
        and call(request_id="walk-7", max_tokens=2).json()["id"].endswith("-walk-7"),
        "logits_processors": _unsupported(call, "logits_processors", ["my.module:Processor"]),
        "guided_whitespace_pattern": _unsupported(call, "guided_whitespace_pattern", " "),
        "structural_tag": lambda: refused(call(structural_tag="{}"), "structural_tag")
        and _shown_by("tests/e2e/test_structural_tag_server.py", "test_structural_tag_request_shapes_reach_the_engine"),
        # SamplingParams.extra_args: read only by custom logits processors, and this server loads none.
        "vllm_xargs": lambda: refused(call(vllm_xargs={"k": 1}), "none is loaded")
        and text(call(vllm_xargs={})) == greedy(),
        "kv_transfer_params": _unsupported(call, "kv_transfer_params", {"do_remote_decode": True}),
        "mm_processor_kwargs": _unsupported(call, "mm_processor_kwargs", {"size": 1}),
        # vLLM's newer fields: vLLM's default is accepted (the answer unchanged), another value refused.
        **{name: _refused_unless_default(call, greedy, name, value, default) for name, value, default in (
            ("ec_transfer_params", {"a": 1}, None), ("watermarking", True, False),
            ("session_id", "s", None),
            ("routed_experts_prompt_start", 2, 0),
            ("return_token_offsets", True, False), ("return_mm_kwargs", False, True),
("thinking_token_budget", 8, -1))},
    }


def _chunked_by(call: Callable[..., httpx.Response]) -> bool:
    """stream_interval 3: after the first, the token-bearing chunks carry 3 tokens or more (the
    last the rest); the text as streamed without it."""
    def token_chunks(**patch: Any) -> list[int]:
        events = sse_events(call(stream=True, ignore_eos=True, max_tokens=8, return_token_ids=True, **patch))
        return [len(c["token_ids"]) for e in events for c in e["choices"] if c.get("token_ids")]

    def streamed_text(**patch: Any) -> str:
        events = sse_events(call(stream=True, ignore_eos=True, max_tokens=8, **patch))
        return "".join(c.get("text", c.get("delta", {}).get("content") or "") for e in events for c in e["choices"])

    # (a busy server may merge a slow reader's chunks, never split them: tests/unit/test_stream_interval.py
    # checks the exact cut)
    sizes = token_chunks(stream_interval=3)
    return (sum(token_chunks()) == sum(sizes) == 8 and len(sizes) <= 4 and all(n >= 3 for n in sizes[1:-1])
            and streamed_text(stream_interval=3) == streamed_text() and refused(call(stream_interval=0), "stream_interval"))


def _truncated_from(call: Callable[..., httpx.Response], long_input: dict[str, Any]) -> bool:
    """truncate_prompt_tokens keeps the prompt's last tokens, or its first with "right"."""
    def kept(**patch: Any) -> list[int]:
        body = call(**long_input, return_token_ids=True, max_tokens=1, **patch).json()
        return body["prompt_token_ids"] if "prompt_token_ids" in body else body["choices"][0]["prompt_token_ids"]

    full = kept()
    return (kept(truncate_prompt_tokens=5) == kept(truncate_prompt_tokens=5, truncation_side="left") == full[-5:]
            and kept(truncate_prompt_tokens=5, truncation_side="right") == full[:5] and full[:5] != full[-5:]
            and refused(call(truncation_side="middle"), "truncation_side"))


def _token_ids_returned(call: Callable[..., httpx.Response], greedy: Callable[..., str]) -> bool:
    """The prompt's ids (completions: per choice; chat: at the top) and the choice's ids, as
    many as usage counts; the text as without the field; absent unless asked for."""
    resp = call(return_token_ids=True)
    body, choice = resp.json(), resp.json()["choices"][0]
    prompt_ids = choice["prompt_token_ids"] if "text" in choice else body["prompt_token_ids"]
    plain = call().json()
    return (text(resp) == greedy() and len(choice["token_ids"]) == tokens(resp)
            and len(prompt_ids) == prompt_tokens(resp) and all(isinstance(t, int) for t in prompt_ids)
            and "token_ids" not in plain["choices"][0] and "prompt_token_ids" not in plain)


def _refused_unless_default(call: Callable[..., httpx.Response], greedy: Callable[..., str], name: str, value: Any,
                            default: Any) -> Callable[[], bool]:
    return lambda: refused(call(**{name: value}), f"{name} is not supported") and greedy(**{name: default}) == greedy()


def _with_logprobs(call: Callable[..., httpx.Response], **patch: Any) -> httpx.Response:
    """Logprobs on, either endpoint's way (the body must be valid for both; the chat field wins)."""
    resp = call(logprobs=True, **patch)
    return resp if resp.status_code == 200 else call(logprobs=1, **patch)


def _shown_by(path: str, test_name: str) -> bool:
    from e2e_helpers import REPO_ROOT

    return f"def {test_name}(" in (REPO_ROOT / path).read_text()


def _prompt_logprobs(call: Callable[..., httpx.Response]) -> bool:
    body = call(prompt_logprobs=1).json()
    return bool(body["choices"][0].get("prompt_logprobs") or body.get("prompt_logprobs"))


def completion_fields(api: Api) -> dict[str, Callable[[], bool]]:
    c = api.cmpl
    return {
        **shared_fields(c, {"prompt": "Hello world, this is " * 12}),
        "prompt": lambda: prompt_tokens(c(prompt="Hi")) != prompt_tokens(c()),
        "suffix": lambda: refused(c(suffix="x"), "suffix"),
        "echo": lambda: text(c(echo=True)) == "Hello world, this is" + text(c()),
        "logprobs": lambda: c(logprobs=2).json()["choices"][0]["logprobs"] is not None
        and c().json()["choices"][0]["logprobs"] is None,
        "logprob_token_ids": lambda: all({"token_id:65", "token_id:66"} <= set(top) and len(top) <= 3 for top in c(
            logprobs=1, logprob_token_ids=[65, 66], return_tokens_as_token_ids=True).json()["choices"][0]["logprobs"][
            "top_logprobs"])
        and refused(c(logprob_token_ids=[65]), "requires logprobs") and _shown_by(*LOGPROB_TOKEN_IDS_TEST),
        # The demo tokenizer adds no special tokens; one that does is used there.
        "add_special_tokens": lambda: _shown_by(*ADD_SPECIAL_TOKENS_TEST),
        # Refused without --enable-prompt-embeds (this server); served with it: the named test.
        "prompt_embeds": lambda: refused(c(prompt_embeds="AAAA"), "--enable-prompt-embeds")
        and _shown_by("tests/e2e/test_prompt_embeds_server.py", "test_base64_payloads_give_the_tokens_of_the_ids"),
    }


def chat_fields(api: Api) -> dict[str, Callable[[], bool]]:
    c = api.chat
    partial = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Sure, "}]
    cont = dict(messages=partial, add_generation_prompt=False, continue_final_message=True)
    return {
        **shared_fields(c, {"messages": [{"role": "user", "content": "Hello world, this is " * 12}]}),
        "messages": lambda: prompt_tokens(c(messages=[{"role": "user", "content": "Hi there you"}]))
        != prompt_tokens(c()),
        "logprobs": lambda: c(logprobs=True).json()["choices"][0]["logprobs"] is not None,
        "logprob_token_ids": lambda: all({"token_id:65", "token_id:66"} <= {t["token"] for t in entry["top_logprobs"]}
                                         for entry in c(logprobs=True, logprob_token_ids=[65, 66],
                                                        return_tokens_as_token_ids=True).json()["choices"][0][
                                             "logprobs"]["content"])
        and refused(c(logprob_token_ids=[65]), "requires logprobs") and _shown_by(*LOGPROB_TOKEN_IDS_TEST),
        "top_logprobs": lambda: len(c(logprobs=True, top_logprobs=2).json()["choices"][0]["logprobs"]["content"][0][
            "top_logprobs"]) == 2,
        "max_completion_tokens": lambda: tokens(c(max_completion_tokens=3)) == 3,
        "tools": lambda: _shown_by("tests/e2e/test_structured_server.py", "test_chat_template_receives_tools_and_tool_messages"),
        "tool_choice": lambda: refused(c(tool_choice="required"), "tool")
        and _shown_by("tests/e2e/test_structured_server.py", "test_named_tool_choice_gives_valid_arguments"),
        "parallel_tool_calls": lambda: _shown_by("tests/e2e/test_structured_server.py", "test_tool_choice_required_gives_valid_calls"),
        "add_generation_prompt": lambda: prompt_tokens(c(add_generation_prompt=False)) < prompt_tokens(c()),
        "continue_final_message": lambda: prompt_tokens(c(**cont)) == prompt_tokens(
            c(messages=partial, add_generation_prompt=False)) - 1,
        "echo": lambda: text(c(**cont, echo=True)) == "Sure, " + text(c(**cont)),
        "add_special_tokens": lambda: _shown_by(*ADD_SPECIAL_TOKENS_TEST),
        "chat_template": lambda: refused(c(chat_template="{{ 'x' }}"), "chat_template"),
        "chat_template_kwargs": lambda: prompt_tokens(c(chat_template_kwargs={"bos_token": ""}))
        == prompt_tokens(c()) - 1,
        "documents": lambda: _shown_by("tests/e2e/test_structured_server.py", "test_documents_reach_the_chat_template"),
        "include_reasoning": lambda: _shown_by("tests/e2e/test_structured_server.py",
                                               "test_include_reasoning_false_drops_the_reasoning"),
        "reasoning_effort": lambda: _shown_by("tests/unit/test_request_fields.py",
                                              "test_reasoning_effort_reaches_the_chat_template")
        and refused(c(reasoning_effort="extreme"), "reasoning_effort"),
        "media_io_kwargs": _unsupported(c, "media_io_kwargs", {"image": {}}),
        "return_prompt_text": lambda: "Hello" in c(return_prompt_text=True).json()["prompt_text"]
        and "prompt_text" not in c().json()
        and sse_events(c(return_prompt_text=True, stream=True))[0]["prompt_text"] == c(return_prompt_text=True).json()[
            "prompt_text"],
    }


def tokenizer_fields(api: Api) -> dict[str, Callable[[], bool]]:
    msgs = [{"role": "user", "content": "Hello"}]
    count = lambda r: r.json()["count"]  # noqa: E731
    return {
        "model": lambda: refused(api.tok(model="nope"), "does not exist", 404),
        "prompt": lambda: count(api.tok(prompt="Hello there friend")) > count(api.tok()),
        "messages": lambda: count(api.post("/tokenize", {"messages": msgs})) > 3,
        "add_special_tokens": lambda: _shown_by(*ADD_SPECIAL_TOKENS_TEST),
        "add_generation_prompt": lambda: count(api.post("/tokenize", {"messages": msgs, "add_generation_prompt": False}))
        < count(api.post("/tokenize", {"messages": msgs})),
        "continue_final_message": lambda: count(api.post("/tokenize", {
            "messages": msgs + [{"role": "assistant", "content": "Hi"}], "add_generation_prompt": False,
            "continue_final_message": True})) == count(api.post("/tokenize", {
                "messages": msgs + [{"role": "assistant", "content": "Hi"}], "add_generation_prompt": False})) - 1
        and refused(api.tok(continue_final_message=True), "apply to messages"),
        "return_token_strs": lambda: "token_strs" in api.tok(return_token_strs=True).json()
        and "token_strs" not in api.tok().json(),
        "tools": lambda: _shown_by("tests/e2e/test_structured_server.py", "test_tokenize_counts_what_chat_renders")
        and refused(api.tok(tools=[]), "apply to messages"),
        "chat_template_kwargs": lambda: count(api.post("/tokenize", {"messages": msgs, "chat_template_kwargs": {
            "bos_token": ""}})) == count(api.post("/tokenize", {"messages": msgs})) - 1
        and refused(api.tok(chat_template_kwargs={}), "apply to messages"),
        "chat_template": lambda: refused(api.post("/tokenize", {"messages": msgs, "chat_template": "{{ 'x' }}"}),
                                         "chat_template"),
        "mm_processor_kwargs": lambda: refused(api.tok(mm_processor_kwargs={}), "mm_processor_kwargs"),
        "media_io_kwargs": lambda: refused(api.tok(media_io_kwargs={"image": {"x": 1}}), "media_io_kwargs")
        and count(api.tok(media_io_kwargs={})) == count(api.tok()),
    }


def detokenizer_fields(api: Api) -> dict[str, Callable[[], bool]]:
    return {
        "model": lambda: refused(api.post("/detokenize", {"model": "nope", "tokens": [65]}), "does not exist", 404),
        "tokens": lambda: api.post("/detokenize", {"tokens": [65, 65]}).json()["prompt"] == "]]",
    }


ENDPOINTS = {
    "completions": (CompletionRequest, completion_fields),
    "chat": (ChatCompletionRequest, chat_fields),
    "tokenize": (TokenizeRequest, tokenizer_fields),
    "detokenize": (DetokenizeRequest, detokenizer_fields),
}
CASES = [(ep, name) for ep, (model, _) in ENDPOINTS.items() for name in model.model_fields]


@pytest.fixture()
def api(http: httpx.Client) -> Api:
    return Api(http)


def test_every_field_has_an_entry() -> None:
    for endpoint, (model, fields) in ENDPOINTS.items():
        assert set(fields(Api(None))) == set(model.model_fields), endpoint  # type: ignore[arg-type]


@pytest.mark.parametrize("endpoint, field", CASES, ids=[f"{e}-{f}" for e, f in CASES])
def test_request_field(api: Api, endpoint: str, field: str) -> None:
    _, fields = ENDPOINTS[endpoint]
    assert fields(api)[field](), f"{endpoint}.{field} had no effect and was not refused"
