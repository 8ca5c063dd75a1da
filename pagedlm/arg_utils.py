"""One declaration per option: dataclass fields -> argparse flags, plus the two tables that
keep an option from being accepted and ignored.

Every user-facing option is a field of EngineArgs or ServerArgs declared with ``opt(...)``
(its help line and ``serve --help`` group live beside it). ``add_dataclass_args`` turns the
fields into flags, so the CLI and ``LLM(**kwargs)`` can never disagree. After parsing,
``refuse_unsupported`` refuses what is not built yet (NOT_YET_SUPPORTED) and
``log_no_effect`` prints a one-line notice for what has no effect here (NO_EFFECT). A helper who builds a feature deletes its
entry from NOT_YET_SUPPORTED.
"""

from __future__ import annotations

import argparse
import dataclasses
import decimal
import json
import logging
import re
import types
import typing
from typing import Any

from pagedlm.config import ConfigError

logger = logging.getLogger("pagedlm")

# option -> the feature it needs. Any value other than the default (or an equivalent listed
# in DEFAULT_EQUIVALENTS) is refused with one line naming the feature.
NOT_YET_SUPPORTED: dict[str, str] = {
    "cpu_offload_gb": "CPU weight offloading",
    "logprobs_mode": "logprobs other than raw_logprobs (raw logits, or after the sampling settings)",
    "model_impl": "other model implementations (the transformers / terratorch backends)",
    "skip_tokenizer_init": "running without a tokenizer",
    "enable_sleep_mode": "sleep mode",
    "enable_expert_parallel": "expert parallelism (MoE experts are split by tensor parallelism instead)",
    "max_num_partial_prefills": "more than one concurrent partial prefill (vLLM V0's scheduler)",
    "max_long_partial_prefills": "more than one concurrent long partial prefill (vLLM V0's scheduler)",
}

# Values that mean the same as the default (so they are not "non-default").
DEFAULT_EQUIVALENTS: dict[str, tuple[Any, ...]] = {
    "model_impl": ("vllm",),
    "tokenizer_mode": ("hf",),
    "kv_cache_dtype": ("auto",),
}

# option -> why it has no effect here; a non-default value logs this one line.
NO_EFFECT: dict[str, str] = {
    "swap_space": "pagedlm preempts by recompute and never swaps KV blocks to CPU memory",
    "disable_log_requests": "pagedlm does not log request contents",
    "enable_log_requests": "pagedlm does not log request contents",
    "max_log_len": "pagedlm does not log request contents",
    "enable_log_outputs": "pagedlm does not log request contents or outputs",
    "disable_cascade_attn": "pagedlm has no cascade attention (shared prefixes share KV blocks instead)",
    "max_parallel_loading_workers": "weights load in one pass per rank",
    "disable_custom_all_reduce": "tensor-parallel all-reduces always run through NCCL (there is no custom all-reduce)",
    "max_seq_len_to_capture": "CUDA graphs cover decode batches of any context length (their sizes: "
                              "--cuda-graph-sizes)",
    "enable_prompt_tokens_details": "usage.prompt_tokens_details.cached_tokens is always reported",
    "disable_frontend_multiprocessing": "the engine core always runs in its own process, the frontend in the server's",
}


def opt(default: Any, help: str, group: str, *, flags: tuple[str, ...] = (), choices: list[Any] | None = None,
        nargs: str | None = None, cli: bool = True, parse: Any = None, const: Any = None, secret: bool = False) -> Any:
    """A dataclass field that is also a CLI flag. ``flags`` adds short aliases (``-tp``);
    ``parse`` replaces the flag's parser taken from the annotation (with ``nargs="?"``, the
    flag alone stands for ``const``); a ``secret`` stays out of the dataclass's repr."""
    meta = {"help": help, "group": group, "flags": flags, "choices": choices, "nargs": nargs, "cli": cli,
            "parse": parse, "const": const}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta, repr=not secret)
    return dataclasses.field(default=default, metadata=meta, repr=not secret)


def _base_type(annotation: Any) -> Any:
    """int | None -> int; list[str] | None -> list[str]."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else args[-1]
    return annotation


def json_or_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def human_readable_int(text: str) -> int:
    """vLLM's sizes (--max-model-len, --max-num-batched-tokens, --kv-cache-memory-bytes): a plain
    integer, or one with a suffix: k/m/g/t are powers of 1000 ('25.6k' = 25600), K/M/G/T powers
    of 1024 ('1K' = 1024; whole numbers only)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgtKMGT])", text.strip())
    if match is None:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r} (an integer, optionally with a suffix "
                                             "k/m/g (x1000) or K/M/G (x1024), e.g. 32k)") from None
    number, suffix = match.groups()
    if suffix in _BINARY:
        if "." in number:
            raise argparse.ArgumentTypeError(f"{text!r}: no decimals with a binary suffix ({suffix}); did you mean "
                                             f"{number}{suffix.lower()}?")
        return int(number) * _BINARY[suffix]
    return int(decimal.Decimal(number) * _DECIMAL[suffix])  # exact: '1.001k' is 1001


def json_object_or_int(text: str) -> dict[str, Any] | int:
    """A JSON object, or a bare integer (vLLM's ``-O3``: an optimization level)."""
    return int(text) if text.strip().lstrip("-").isdigit() else json_or_dict(text)


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, groups: dict[str, Any],
                       skip: tuple[str, ...] = ()) -> None:
    """One flag per ``opt`` field of ``cls``, in its ``serve --help`` group."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.metadata.get("cli", False):
            continue
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        names = ["--" + f.name.replace("_", "-"), *meta["flags"]]
        base = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": _help(meta["help"], default)}
        if meta.get("parse") is not None:
            kwargs["type"] = meta["parse"]
            if meta["nargs"] is not None:
                kwargs.update(nargs=meta["nargs"], const=meta["const"])
        elif base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is list:
            kwargs.update(nargs=meta["nargs"] or "+", type=typing.get_args(base)[0])
        elif typing.get_origin(base) is dict or base is dict:
            kwargs.update(type=json_or_dict, metavar="JSON")
        else:
            kwargs["type"] = base
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
        group.add_argument(*names, dest=f.name, **kwargs)


def _help(text: str, default: Any) -> str:
    if "default" in text:
        return text.replace("%", "%%")
    shown = "off" if default is False else "on" if default is True else default
    return f"{text} (default: {shown})".replace("%", "%%")


def dataclass_kwargs(cls: type, namespace: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags that belong to ``cls`` (unset flags are absent: defaults stay the
    dataclass's, one source of truth)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(namespace).items() if k in names}


def _changed(obj: Any) -> list[tuple[str, Any]]:
    """(name, value) of the options set to something other than their default."""
    changed = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if value != default and value not in DEFAULT_EQUIVALENTS.get(f.name, ()):
            changed.append((f.name, value))
    return changed


def refuse_unsupported(obj: Any) -> None:
    """Raise ConfigError, in one line naming the feature, for a not-yet-supported option."""
    for name, value in _changed(obj):
        if name in NOT_YET_SUPPORTED:
            raise ConfigError(f"{flag_name(name)}={value!r}: {NOT_YET_SUPPORTED[name]} is not supported "
                              "yet in pagedlm; remove the option.")


def log_no_effect(obj: Any) -> None:
    """One notice per option that is set but has no effect here. Called once, by the entry
    point (LLM, serve), not wherever a config is built (engine-core processes build it too)."""
    for name, _ in _changed(obj):
        if name in NO_EFFECT:
            logger.warning("%s has no effect: %s.", flag_name(name), NO_EFFECT[name])


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")
