"""Request bodies of the OpenAI-compatible API (pydantic), and their SamplingParams.

Field names and defaults follow the OpenAI API plus vLLM's extra sampling fields (what the
``openai`` client sends through ``extra_body``). Unknown fields are ignored with a warning in
the log, as vLLM does; vLLM's own fields that pagedlm does not implement are declared and
refused when set (``SamplingFields.unsupported_feature``). Value ranges are checked by
SamplingParams, whose errors name the field; here we check types and the bounds that keep a
request from costing unbounded work.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pagedlm.arg_utils import is_no_op
from pagedlm.entrypoints.openai.structured import request_structured_outputs
from pagedlm.sampling_params import MAX_N, SamplingParams

logger = logging.getLogger(__name__)

MAX_STOP_SEQUENCES = 64
MAX_STOP_SEQUENCE_CHARS = 1024
MAX_STOP_TOKEN_IDS = 1024
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _log_ignored_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            ignored = sorted(set(data) - set(cls.model_fields))
            if ignored:
                logger.warning("The following fields were present in the request but ignored: %s", ignored)
        return data


class StreamOptions(OpenAIBaseModel):
    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False


class ResponseFormat(OpenAIBaseModel):
    type: str
    json_schema: dict[str, Any] | None = None
    # type "structural_tag": vLLM's two shapes, structures + triggers, or xgrammar's format.
    structures: list[Any] | None = None
    triggers: list[Any] | None = None
    format: Any = None


class SamplingFields(OpenAIBaseModel):
    """Fields shared by /v1/completions and /v1/chat/completions."""

    model: str | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None
    seed: int | None = Field(None, ge=_INT64_MIN, le=_UINT64_MAX)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # vLLM extras
    top_k: int | None = Field(None, le=_INT64_MAX)  # ints reach the engine core as 64-bit
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int = Field(0, le=_INT64_MAX)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    prompt_logprobs: int | None = None
    use_beam_search: bool = False
    length_penalty: float = 1.0  # beam search only
    best_of: int | None = None
    priority: int = Field(0, ge=_INT64_MIN, le=_INT64_MAX)  # --scheduling-policy priority: lower first
    # Structured output (pagedlm.entrypoints.openai.structured maps them to one constraint).
    structured_outputs: dict[str, Any] | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structural_tag: str | dict[str, Any] | None = None  # vLLM's older spelling of structured_outputs.structural_tag
    guided_decoding_backend: str | None = None  # the server's own backend (xgrammar), or refused
    truncate_prompt_tokens: int | None = None  # keep the last k prompt tokens (-1: up to max_model_len)
    truncation_side: Literal["left", "right"] | None = None  # "right": keep the first k instead (vLLM's)
    # vLLM's: a stream's chunks carry this many tokens each (raises the server's --stream-interval)
    stream_interval: int | None = Field(None, ge=1)
    # vLLM's: {max_pattern_size, min_pattern_size, min_count}: stop once the output repeats itself
    repetition_detection: dict[str, int] | None = None
    cache_salt: str | None = None  # prefix-cache blocks are shared only between requests of the same salt
    return_tokens_as_token_ids: bool | None = None  # None: the server's --return-tokens-as-token-ids
    # vLLM's: the prompt's and each choice's token ids beside the text (prompt_token_ids /
    # token_ids; in a stream the prompt's with a choice's first chunk, then each chunk's new ids)
    return_token_ids: bool | None = None
    # vLLM's: the logprobs of these token ids at each generated position (with the sampled
    # token's), in place of the top-k; needs logprobs (completions) / logprobs true (chat).
    logprob_token_ids: list[int] | None = Field(None, min_length=1)
    request_id: str | None = Field(None, min_length=1, max_length=256)  # the response id's suffix
    # vLLM's: SamplingParams.extra_args, read by the server's custom logits processors
    # (--logits-processors); refused by the engine when none is loaded.
    vllm_xargs: dict[str, str | int | float | list[str | int | float]] | None = None
    # vLLM fields pagedlm does not implement: refused when set to anything but vLLM's default (or
    # a value that means the same here); see unsupported_feature and _UNSUPPORTED.
    logits_processors: Any = None
    guided_whitespace_pattern: Any = None
    kv_transfer_params: Any = None
    mm_processor_kwargs: Any = None
    ec_transfer_params: Any = None
    watermarking: Any = None
    session_id: Any = None
    routed_experts_prompt_start: Any = 0
    return_token_offsets: Any = False
    return_mm_kwargs: Any = True
    thinking_token_budget: Any = None

    @field_validator("n", mode="before")
    @classmethod
    def _null_n(cls, n: Any) -> Any:
        return 1 if n is None else n  # OpenAI's API takes null for the default

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else (stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(stops)}")
        if any(len(s) > MAX_STOP_SEQUENCE_CHARS for s in stops):
            raise ValueError(f"each stop sequence must be at most {MAX_STOP_SEQUENCE_CHARS} characters")
        return stop

    @field_validator("prompt_logprobs")
    @classmethod
    def _check_prompt_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        # As vLLM: a stream has no place for them (0 asks for none, so it is let through).
        if value is not None and (value > 0 or value == -1) and info.data.get("stream"):
            raise ValueError("not available when stream is true")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key, value in (bias or {}).items():
            if not key.lstrip("-").isdigit():
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"values must be in [-100, 100], got {value} for token {key}")
        return bias

    @model_validator(mode="after")
    def _check_common(self) -> "SamplingFields":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options can only be set when stream is true")
        if self.length_penalty != 1.0 and not self.use_beam_search:
            raise ValueError("length_penalty applies to beam search only; set use_beam_search or remove it")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported (only best_of == n); remove best_of")
        if self.logprob_token_ids is not None and self.use_beam_search:
            raise ValueError("logprob_token_ids is not supported with beam search")
        return self

    def unsupported_feature(self) -> tuple[str, str] | None:
        """(param, message) for a vLLM field that is set but that pagedlm does not implement."""
        found = first_unsupported(self, _UNSUPPORTED)
        if found is not None:
            return found
        backend = self.guided_decoding_backend
        if backend is not None and backend not in ("auto", "xgrammar"):
            return "guided_decoding_backend", (f"guided_decoding_backend {backend!r} is not available: pagedlm's "
                                               "structured output runs on xgrammar; remove it or use 'xgrammar'.")
        if self.cache_salt is not None and not self.cache_salt:
            return "cache_salt", "cache_salt must be a non-empty string."
        return None

    def sampling_params(self, logprobs: int | None, max_tokens: int | None,
                        defaults: dict[str, Any] | None = None) -> SamplingParams:
        """-> SamplingParams; raises ValueError naming the field on bad values. ``defaults``
        (from the model's generation config) fill the fields the request leaves unset; its
        max_tokens caps the request's, as in vLLM."""
        defaults = defaults or {}
        caps = [t for t in (max_tokens, defaults.get("max_tokens")) if t is not None]

        def pick(value: Any, name: str, fallback: Any) -> Any:
            return value if value is not None else defaults.get(name, fallback)

        return SamplingParams(
            n=self.n,
            temperature=pick(self.temperature, "temperature", 1.0),
            top_p=pick(self.top_p, "top_p", 1.0),
            top_k=pick(self.top_k, "top_k", 0),
            min_p=pick(self.min_p, "min_p", 0.0),
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=pick(self.repetition_penalty, "repetition_penalty", 1.0),
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            bad_words=self.bad_words,
            ignore_eos=self.ignore_eos,
            max_tokens=min(caps) if caps else None,
            min_tokens=self.min_tokens,
            # As vLLM's: the listed ids take the place of the top-k (logprobs becomes their count).
            logprobs=None if self.logprob_token_ids else logprobs,
            logprob_token_ids=self.logprob_token_ids,
            prompt_logprobs=self.prompt_logprobs,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            include_stop_str_in_output=self.include_stop_str_in_output,
            logit_bias=self.logit_bias,
            allowed_token_ids=self.allowed_token_ids,
            structured_outputs=request_structured_outputs(self),
            truncate_prompt_tokens=self.truncate_prompt_tokens,
            extra_args=self.vllm_xargs or None,
            stream_interval=self.stream_interval,
            repetition_detection=self.repetition_detection,
        )


def first_unsupported(request: OpenAIBaseModel, table: dict[str, tuple[tuple[Any, ...], str]]
                      ) -> tuple[str, str] | None:
    """(param, message) for the first field of ``table`` (vLLM field -> (values that change
    nothing, why another value is refused)) that ``request`` declares and sets otherwise."""
    fields = type(request).model_fields
    for name, (no_op, why) in table.items():
        value = getattr(request, name, None) if name in fields else None
        if not is_no_op(value, no_op):
            return name, f"{name} is not supported by pagedlm ({why}); remove it."
    return None


# vLLM request field -> (values that change nothing, why another value is refused). A field
# of one endpoint only (media_io_kwargs) is declared there.
_UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "logits_processors": ((None,), "logits processors named in a request are not supported (load them at start-up "
                                   "with --logits-processors and configure them per request with vllm_xargs)"),
    "guided_whitespace_pattern": ((None,), "xgrammar's JSON whitespace is not configurable per request"),
    "kv_transfer_params": ((None,), "no disaggregated prefill / KV transfer"),
    "mm_processor_kwargs": ((None,), "text models only"),
    "media_io_kwargs": ((None, {}), "text models only"),
    "ec_transfer_params": ((None,), "no encoder-cache transfer"),
    "watermarking": ((None, False), "no watermarking"),
    "session_id": ((None,), "no session identity is kept"),
    "routed_experts_prompt_start": ((0,), "no routed-expert data is returned"),
    "return_token_offsets": ((None, False), "vLLM's /render endpoints only"),
    "return_mm_kwargs": ((True,), "vLLM's /render endpoints only"),
    "thinking_token_budget": ((None, -1), "no thinking-token budget"),
}


class CompletionRequest(SamplingFields):
    prompt: Any = None  # may be left out when prompt_embeds is given
    max_tokens: int | None = 16  # OpenAI's and vLLM's default for completions; null: the rest of the context
    suffix: str | None = None
    echo: bool | None = False  # null: false, as OpenAI's API
    # Not -1 here: vLLM's completions protocol refuses a negative logprobs (prompt_logprobs may be -1).
    logprobs: int | None = Field(None, ge=0)  # the engine enforces --max-logprobs
    add_special_tokens: bool = True
    # vLLM's: base64 of torch.save(tensor [num_tokens, hidden]), or a list of them; served only
    # with --enable-prompt-embeds (serving_completion loads them).
    prompt_embeds: str | list[str] | None = None

    @model_validator(mode="after")
    def _check_logprob_token_ids(self) -> "CompletionRequest":
        if self.logprob_token_ids is not None:  # vLLM's rules
            if self.echo and self.max_tokens == 0:
                raise ValueError("logprob_token_ids is not supported when echo is true and max_tokens is 0 (no "
                                 "output tokens are generated)")
            if self.logprobs is None:
                raise ValueError("logprob_token_ids requires logprobs to be set")
        return self

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: Any) -> str | list[str] | list[int] | list[list[int]] | None:
        if prompt is None:  # (then prompt_embeds must be given: _check_prompt_or_embeds)
            return None
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and prompt:
            if all(isinstance(p, str) for p in prompt):
                return prompt
            if all(_is_token_id(t) for t in prompt):
                return prompt
            if all(isinstance(p, list) and all(_is_token_id(t) for t in p) for p in prompt):
                return prompt
        if isinstance(prompt, list) and not prompt:
            raise ValueError("the prompt cannot be empty")
        raise ValueError("must be a string, a list of strings, a list of token ids or a list of lists of token ids")

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if p is None:
            return []
        if isinstance(p, str) or (p and all(_is_token_id(t) for t in p)):
            return [p]
        return list(p)


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ChatMessage(BaseModel):
    # Extra keys (name, tool_calls, tool_call_id, reasoning...) are kept; chat_content's
    # template_message picks those vLLM hands the template. Any role, as vLLM's (Llama 3.1's
    # "ipython"): the template decides what it renders.
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[str | dict[str, Any]] | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = False
    # -1: the whole vocabulary (vLLM's); the engine enforces --max-logprobs
    top_logprobs: int | None = Field(None, ge=-1)
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    echo: bool = False
    add_special_tokens: bool = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    documents: list[dict[str, Any]] | None = None  # RAG documents, handed to the chat template
    include_reasoning: bool = True  # false: no reasoning_content in the answer (--reasoning-parser)
    # Handed to the chat template as reasoning_effort, with enable_thinking (effort != "none")
    # unless chat_template_kwargs sets it, as vLLM does.
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    media_io_kwargs: Any = None  # refused (_UNSUPPORTED)
    return_prompt_text: bool | None = None  # vLLM's: the rendered chat template's text as prompt_text

    @model_validator(mode="after")
    def _check_chat(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and self.top_logprobs != 0 and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.logprob_token_ids is not None and not self.logprobs:
            raise ValueError("logprob_token_ids requires logprobs to be true")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError("continue_final_message and add_generation_prompt cannot both be true; "
                             "set add_generation_prompt to false to continue the final message")
        return self

    def template_kwargs(self) -> dict[str, Any] | None:
        """chat_template_kwargs, with reasoning_effort (and enable_thinking) where it is set."""
        if self.reasoning_effort is None:
            return self.chat_template_kwargs
        return {"reasoning_effort": self.reasoning_effort, "enable_thinking": self.reasoning_effort != "none",
                **(self.chat_template_kwargs or {})}

    def num_logprobs(self) -> int | None:
        if not self.logprobs:
            return None
        return self.top_logprobs or 0

    def num_top_logprobs(self) -> int | None:
        """How many entries each token's top_logprobs lists; None: all of them (top_logprobs -1,
        or logprob_token_ids: the listed ids, as vLLM's)."""
        if self.logprob_token_ids or self.top_logprobs == -1:
            return None
        return self.top_logprobs or 0

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False
    tools: list[dict[str, Any]] | None = None  # with messages: what the chat template renders
    chat_template_kwargs: dict[str, Any] | None = None
    chat_template: str | None = None  # refused, as on /v1/chat/completions (--chat-template)
    mm_processor_kwargs: Any = None  # refused: text models only
    media_io_kwargs: Any = None  # refused unless empty: text models only

    @model_validator(mode="after")
    def _one_input(self) -> "TokenizeRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        chat_only = {"add_generation_prompt", "continue_final_message", "tools", "chat_template_kwargs"}
        if self.prompt is not None and self.model_fields_set & chat_only:
            raise ValueError(f"{sorted(self.model_fields_set & chat_only)} apply to messages, not to a prompt")
        if self.chat_template is not None:
            raise ValueError("chat_template in the request is not allowed; start the server with --chat-template")
        if self.mm_processor_kwargs is not None:
            raise ValueError("mm_processor_kwargs is not supported (text models only)")
        if self.media_io_kwargs not in (None, {}):
            raise ValueError("media_io_kwargs is not supported (text models only)")
        return self


class DetokenizeRequest(OpenAIBaseModel):
    model: str | None = None
    tokens: list[int]
