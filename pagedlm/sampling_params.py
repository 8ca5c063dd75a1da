"""SamplingParams: vLLM-compatible names and defaults, validated on construction."""

from __future__ import annotations

import copy
import enum
import math
from dataclasses import dataclass, field
from typing import Any

from pagedlm.arg_utils import is_no_op

SAMPLING_EPS = 1e-5  # a temperature below it is greedy (every sampling path reads this one)
MAX_N = 128
MAX_LOGPROBS = 20  # the engine's default --max-logprobs (the engine enforces its own setting)
# vLLM's MAX_LOGPROB_TOKEN_IDS: the longest logprob_token_ids list (a fixed bound, not --max-logprobs).
MAX_LOGPROB_TOKEN_IDS = 128
# The seeds torch.Generator.manual_seed takes (a negative seed stands for seed mod 2**64).
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1


# vLLM SamplingParams fields for features pagedlm lacks: field -> (values that change nothing, why not).
VLLM_ONLY_FIELDS: dict[str, tuple[tuple[Any, ...], str]] = {
    "prompt_logprob_token_ids": ((None,), "prompt logprobs of chosen token ids; use prompt_logprobs=k or -1"),
    "prompt_logprob_start": ((None, 0), "prompt logprobs from a later row; use prompt_logprobs"),
    "thinking_token_budget": ((None,), "a thinking-token budget"),
    "routed_experts_prompt_start": ((0,), "returning MoE routing data"),
    "trace_decode_token_ids": ((None,), "forced decode tokens"),
}


class RequestOutputKind(enum.IntEnum):
    """What each RequestOutput of a running request carries (vLLM's names)."""

    CUMULATIVE = 0  # everything so far
    DELTA = 1  # only what is new since the last output
    FINAL_ONLY = 2  # one output, when the request finishes


@dataclass
class RepetitionDetectionParams:
    """vLLM's: end a request whose output tokens end in a pattern of ``min_pattern_size`` ..
    ``max_pattern_size`` tokens repeated ``min_count`` times in a row (finish_reason
    "repetition", stop_reason "repetition_detected"). max_pattern_size 0 turns it off."""

    max_pattern_size: int = 0
    min_pattern_size: int = 0  # 0: 1
    min_count: int = 0  # at least 2 when on

    def __post_init__(self) -> None:
        sizes = (self.max_pattern_size, self.min_pattern_size, self.min_count)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in sizes):
            raise ValueError(f"repetition_detection: sizes and count must be integers, got {sizes}")
        if self.max_pattern_size < 0 or self.min_pattern_size < 0 or self.min_pattern_size > self.max_pattern_size:
            raise ValueError("repetition_detection: max_pattern_size and min_pattern_size must be >= 0, with "
                             f"min_pattern_size <= max_pattern_size, got {self.min_pattern_size} and "
                             f"{self.max_pattern_size}")
        if self.max_pattern_size > 0 and self.min_count < 2:
            raise ValueError(f"repetition_detection: min_count must be at least 2, got {self.min_count}")

    def repeats(self, token_ids: list[int]) -> bool:
        """Whether ``token_ids`` end in one pattern repeated min_count times (vLLM's check)."""
        if self.max_pattern_size == 0:
            return False
        for size in range(max(self.min_pattern_size, 1), self.max_pattern_size + 1):
            if size * self.min_count > len(token_ids):
                return False
            tail = token_ids[-size:]
            if all(token_ids[-size * (m + 1): len(token_ids) - size * m] == tail for m in range(1, self.min_count)):
                return True
        return False


@dataclass
class StructuredOutputsParams:
    """Constraint on the output: exactly one of json / regex / choice / grammar / json_object /
    structural_tag. Plain JSON-able values only (the compiled grammar lives in the engine core),
    so SamplingParams stays serialisable across processes."""

    json: str | dict | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    # Compact JSON (no free whitespace between tokens): shorter outputs, fewer ways to ramble.
    disable_any_whitespace: bool = False
    # vLLM's: objects keep to their listed properties. xgrammar (vLLM's default backend too)
    # already reads a schema that way, so both values constrain alike.
    disable_additional_properties: bool = False
    # vLLM's field for other backends: known, refused when set (not ignored).
    whitespace_pattern: str | None = None
    # vLLM's: JSON text, {"structures": [{"begin", "schema", "end"}], "triggers": [...]} or
    # xgrammar's {"type": "structural_tag", "format": {...}}; free text until a trigger, then the
    # structure it begins (validate.structural_tag_text reads both).
    structural_tag: str | dict | None = None

    KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")

    def __post_init__(self) -> None:
        if self.whitespace_pattern is not None:
            raise ValueError("structured_outputs.whitespace_pattern is not supported by pagedlm (xgrammar's JSON "
                             "whitespace is not configurable; disable_any_whitespace=True gives compact JSON).")
        given = [k for k in self.KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(
                "structured_outputs must set exactly one of json, regex, choice, grammar, json_object or "
                f"structural_tag; got {given or 'none'}.")
        self._verify_structural_tag()
        if self.choice is not None and (not isinstance(self.choice, list) or not self.choice
                                        or not all(isinstance(c, str) for c in self.choice)):
            raise ValueError(f"structured_outputs.choice must be a non-empty list of strings, got {self.choice!r}.")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"structured_outputs.{name} must be a string, got {type(value).__name__}.")
        for name in ("json_object", "disable_any_whitespace", "disable_additional_properties"):
            value = getattr(self, name)
            if not isinstance(value, bool) and (value is not None or name != "json_object"):
                raise ValueError(f"structured_outputs.{name} must be true or false, got {value!r}.")
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise ValueError(f"structured_outputs.json must be a JSON schema (object or string), got "
                             f"{type(self.json).__name__}.")

    def _verify_structural_tag(self) -> None:
        if self.structural_tag is None:
            return
        if not isinstance(self.structural_tag, (str, dict)):
            raise ValueError("structured_outputs.structural_tag must be JSON text (json.dumps of the tag), got "
                             f"{type(self.structural_tag).__name__}.")
        if self.disable_any_whitespace:  # xgrammar's structural tags have no compact-JSON switch
            raise ValueError("structured_outputs.disable_any_whitespace does not apply to structural_tag (its JSON "
                             "bodies take xgrammar's free whitespace); leave it false, or bound whitespace with "
                             "max_whitespace_cnt in a 'format' tag's json_schema.")

    @property
    def kind(self) -> str:
        return next(k for k in self.KINDS if getattr(self, k) not in (None, False))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StructuredOutputsParams":
        """From a plain dict (HTTP extra, msgspec): unknown keys are refused, not dropped."""
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"structured_outputs does not support {unknown}; known fields: "
                             f"{sorted(cls.__dataclass_fields__)}.")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# vLLM's name for StructuredOutputsParams before it was renamed (vLLM 0.10); scripts written
# against older vLLM import it. Same class: pass it as SamplingParams(structured_outputs=...).
GuidedDecodingParams = StructuredOutputsParams


@dataclass
class BeamSearchParams:
    """LLM.beam_search's parameters (here, as in vLLM: ``from pagedlm.sampling_params import
    BeamSearchParams``); the search itself is in pagedlm.beam_search."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.beam_width, int) or self.beam_width < 1:
            raise ValueError(f"beam_width must be at least 1, got {self.beam_width!r}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty}")


def check_truncate_prompt_tokens(keep: Any) -> None:
    """truncate_prompt_tokens (sampling and pooling): None, -1 (up to max_model_len) or k >= 1."""
    if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < -1 or keep == 0):
        raise ValueError(f"truncate_prompt_tokens must be -1 or a positive integer, got {keep!r}.")


_IMMUTABLE = (int, float, str, type(None))  # bools and RequestOutputKind are ints


def _copy_field(value: Any) -> Any:
    """A field's value as deepcopy would copy it; flat lists, sets and dicts of scalars (stop
    strings, token ids, logit bias) by their own copy method."""
    if isinstance(value, _IMMUTABLE):
        return value
    if type(value) in (list, set) and all(isinstance(v, _IMMUTABLE) for v in value):
        return value.copy()
    if type(value) is dict and all(isinstance(k, _IMMUTABLE) and isinstance(v, _IMMUTABLE) for k, v in value.items()):
        return value.copy()
    return copy.deepcopy(value)


@dataclass
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    logit_bias: dict[int, float] | None = None
    allowed_token_ids: list[int] | None = None
    structured_outputs: StructuredOutputsParams | None = None
    truncate_prompt_tokens: int | None = None  # keep only the last k prompt tokens (-1: up to max_model_len)
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    # vLLM's: the caller promises these params serve one request only, so clone() is the object itself.
    skip_clone: bool = False
    # Read by custom logits processors (vLLM's LogitsProcessor interface); the frontend refuses
    # them when the engine loads none (pagedlm.sample.custom_logits.validate_request_params).
    extra_args: dict[str, Any] | None = field(default=None, repr=False)
    # vLLM's: the request takes no blocks from the prefix cache (its own still go in); None: only
    # when it asks for prompt_logprobs, which need every prompt token computed (the KV cache
    # manager reads both).
    skip_reading_prefix_cache: bool | None = field(default=None, repr=False)
    # vLLM's: end the request once its output repeats a pattern (RepetitionDetectionParams; a dict
    # of its fields is taken too).
    repetition_detection: RepetitionDetectionParams | None = field(default=None, repr=False)
    # A DELTA / CUMULATIVE request's outputs come every this many tokens (the first and the last
    # at once); it can only raise the engine's --stream-interval (vLLM's).
    stream_interval: int | None = field(default=None, repr=False)
    # vLLM's: the logprobs of these token ids at each generated position (with the sampled
    # token's), instead of the top-k; logprobs is then len(logprob_token_ids) (set when None).
    logprob_token_ids: list[int] | None = field(default=None, repr=False)
    # vLLM's: logprobs (and prompt logprobs) as a FlatLogprobs (pagedlm.logprobs) instead of a
    # list of dicts: the same entries in flat lists, a constant number of Python objects.
    flat_logprobs: bool = field(default=False, repr=False)
    # vLLM's fields for features pagedlm lacks: their defaults are accepted, other values refused
    # by name (VLLM_ONLY_FIELDS), never ignored.
    prompt_logprob_token_ids: list[int] | None = field(default=None, repr=False)
    prompt_logprob_start: int | None = field(default=None, repr=False)
    thinking_token_budget: int | None = field(default=None, repr=False)
    routed_experts_prompt_start: int = field(default=0, repr=False)
    trace_decode_token_ids: list[int] | None = field(default=None, repr=False)
    # Filled in by the engine's input processor, not by users.
    all_stop_token_ids: set[int] = field(default_factory=set, repr=False)
    bad_words_token_ids: list[list[int]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.seed == -1 and not isinstance(self.seed, bool):
            self.seed = None  # as vLLM and OpenAI: -1 asks for a random seed
        if self.thinking_token_budget == -1 and not isinstance(self.thinking_token_budget, bool):
            self.thinking_token_budget = None  # vLLM's "unlimited"
        for name in ("logprobs", "prompt_logprobs"):  # as vLLM's: True is 1 (and False 0)
            if isinstance(getattr(self, name), bool):
                setattr(self, name, int(getattr(self, name)))
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids or [])
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams.from_dict(self.structured_outputs)
        elif self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise ValueError(f"structured_outputs must be StructuredOutputsParams, got "
                             f"{type(self.structured_outputs).__name__}.")
        if self.logit_bias is not None:
            try:
                self.logit_bias = {int(k): float(v) for k, v in self.logit_bias.items()}
            except (TypeError, ValueError, AttributeError) as e:
                raise ValueError(f"logit_bias must map token ids to floats, got {self.logit_bias!r}") from e
            if any(math.isnan(v) for v in self.logit_bias.values()):  # NaN would win every argmax
                raise ValueError(f"logit_bias values must be numbers, got {self.logit_bias!r}")
        if isinstance(self.top_k, bool) or self.top_k is None:
            raise ValueError(f"top_k must be an integer, got {self.top_k!r}")
        if self.top_k == -1:
            self.top_k = 0
        if self.temperature < SAMPLING_EPS:
            # Greedy: the filters have no effect, normalise them so batching treats it simply.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
        self.output_kind = RequestOutputKind(self.output_kind)
        self._verify()
        # Union, not assignment: a copy decoded from a message keeps the ids the engine added.
        self.all_stop_token_ids = set(self.all_stop_token_ids) | set(self.stop_token_ids)

    def _verify(self) -> None:
        def bad(field_name: str, why: str) -> ValueError:
            value = getattr(self, field_name)
            return ValueError(f"{field_name} {why}, got {value!r}.")

        if not isinstance(self.n, int) or self.n < 1:
            raise bad("n", "must be at least 1")
        if self.n > MAX_N:
            raise bad("n", f"must be at most {MAX_N}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise bad(name, "must be in [-2, 2]")
        if not self.repetition_penalty > 0.0:
            raise bad("repetition_penalty", "must be greater than zero")
        if not self.temperature >= 0.0:
            raise bad("temperature", "must be non-negative")
        # Infinite values make NaN logits, which the sampler picks (an infinite temperature
        # turns the -inf of tokens masked by allowed_token_ids, bad_words, min_tokens into NaN).
        for name in ("temperature", "repetition_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise bad(name, "must be a finite number")
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "must be -1 (disable), 0 (disable) or at least 1")
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", "must be in [0, 1]")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 1):
            raise bad("max_tokens", "must be at least 1")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise bad("min_tokens", "must be greater than or equal to 0")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise bad("min_tokens", f"must be less than or equal to max_tokens={self.max_tokens}")
        for name in ("logprobs", "prompt_logprobs"):  # -1: the whole vocabulary, as vLLM's
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < -1):
                raise bad(name, "must be a non-negative integer, or -1 (the whole vocabulary)")
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad("seed", "must be an integer")
        if self.seed is not None and not MIN_SEED <= self.seed <= MAX_SEED:
            raise bad("seed", f"must be in [{MIN_SEED}, {MAX_SEED}]")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise bad("stop", "must contain only non-empty strings")
        if self.stop and not self.detokenize:
            raise ValueError("stop strings are only supported when detokenize is True.")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must contain non-negative integers")
        if self.allowed_token_ids is not None:
            if len(self.allowed_token_ids) == 0:
                raise bad("allowed_token_ids", "must not be empty")
            if any(not isinstance(t, int) or t < 0 for t in self.allowed_token_ids):
                raise bad("allowed_token_ids", "must contain non-negative integers")
        if self.bad_words is not None and any(not isinstance(w, str) or w == "" for w in self.bad_words):
            raise bad("bad_words", "must be a list of non-empty strings")
        check_truncate_prompt_tokens(self.truncate_prompt_tokens)
        self._verify_vllm_fields(bad)

    def _verify_vllm_fields(self, bad) -> None:
        """vLLM's fields pagedlm takes only at values that change nothing here (VLLM_ONLY_FIELDS)."""
        if self.skip_reading_prefix_cache is None:  # (left None without prompt_logprobs: a copy made
            if self.prompt_logprobs is not None:    # before they are set, as the server's echo does, stays open)
                self.skip_reading_prefix_cache = True
        elif not isinstance(self.skip_reading_prefix_cache, bool):
            raise bad("skip_reading_prefix_cache", "must be true or false")
        elif not self.skip_reading_prefix_cache and self.prompt_logprobs is not None:
            raise bad("skip_reading_prefix_cache", "cannot be false with prompt_logprobs (they need every prompt "
                      "token computed, none read from the prefix cache)")
        if isinstance(self.repetition_detection, dict):
            try:
                self.repetition_detection = RepetitionDetectionParams(**self.repetition_detection)
            except TypeError as e:
                raise bad("repetition_detection", f"has unknown fields ({e})") from e
        elif self.repetition_detection is not None and not isinstance(self.repetition_detection,
                                                                      RepetitionDetectionParams):
            raise bad("repetition_detection", "must be a RepetitionDetectionParams or a dict of its fields")
        if self.stream_interval is not None and (not isinstance(self.stream_interval, int) or self.stream_interval < 1):
            raise bad("stream_interval", "must be at least 1")
        if not isinstance(self.flat_logprobs, bool):
            raise bad("flat_logprobs", "must be true or false")
        if not isinstance(self.skip_clone, bool):
            raise bad("skip_clone", "must be true or false")
        if self.extra_args is not None and not isinstance(self.extra_args, dict):
            raise bad("extra_args", "must be a dict")
        self._verify_logprob_token_ids(bad)
        for name, (no_op, why) in VLLM_ONLY_FIELDS.items():
            value = getattr(self, name)
            if not is_no_op(value, no_op):
                raise ValueError(f"{name} is not supported by pagedlm ({why}), got {value!r}.")

    def _verify_logprob_token_ids(self, bad) -> None:
        """vLLM's rules: a non-empty list of token ids, at most MAX_LOGPROB_TOKEN_IDS, and logprobs
        unset (it becomes the list's length) or equal to that length."""
        ids = self.logprob_token_ids
        if ids is None:
            return
        if not isinstance(ids, (list, tuple)) or not ids:
            raise bad("logprob_token_ids", "must be a non-empty list of token ids")
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in ids):
            raise bad("logprob_token_ids", "must contain non-negative integers")
        if len(ids) > MAX_LOGPROB_TOKEN_IDS:
            raise ValueError(f"logprob_token_ids has {len(ids)} token ids, more than the {MAX_LOGPROB_TOKEN_IDS} "
                             "allowed.")
        self.logprob_token_ids = list(ids)
        if self.logprobs is None:
            self.logprobs = len(ids)
        elif self.logprobs != len(ids):
            raise ValueError(f"logprobs must be unset or equal to len(logprob_token_ids)={len(ids)} when "
                             f"logprob_token_ids is set, got logprobs={self.logprobs}.")

    @property
    def sampling_type_greedy(self) -> bool:
        return self.temperature < SAMPLING_EPS

    def verify_vocab(self, vocab_size: int) -> None:
        """Token ids named by the user must exist in the model's vocabulary."""
        for name, ids in (
            ("stop_token_ids", self.stop_token_ids),
            ("allowed_token_ids", self.allowed_token_ids or []),
            ("logit_bias", list((self.logit_bias or {}).keys())),
            ("logprob_token_ids", self.logprob_token_ids or []),
        ):
            out_of_range = [t for t in ids if not 0 <= t < vocab_size]
            if out_of_range:
                raise ValueError(
                    f"{name} contains token ids outside the vocabulary (size {vocab_size}): {out_of_range[:5]}"
                )

    def clone(self) -> "SamplingParams":
        """A copy that shares nothing mutable with this one (what ``copy.deepcopy`` gives, in a
        tenth of its time: scalar fields are shared, containers deep-copied; the offline LLM
        clones every request's parameters, a thousand at a time)."""
        if self.skip_clone:  # vLLM's: the caller vouches these params are this request's own
            return self
        return self.copy()

    def copy(self) -> "SamplingParams":
        """clone() whatever skip_clone says (for a request's own variants, such as its n choices)."""
        new = object.__new__(type(self))
        new.__dict__.update({name: _copy_field(value) for name, value in vars(self).items()})
        return new

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__
                if k not in ("all_stop_token_ids", "bad_words_token_ids", "output_kind")}
