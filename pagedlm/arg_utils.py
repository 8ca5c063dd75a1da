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
    "max_num_partial_prefills": "more than one concurrent partial prefill (vLLM V0's scheduler)",
    "max_long_partial_prefills": "more than one concurrent long partial prefill (vLLM V0's scheduler)",
}

# Values that mean the same as the default (so they are not "non-default").
DEFAULT_EQUIVALENTS: dict[str, tuple[Any, ...]] = {
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
        if isinstance(parser, argparse.ArgumentParser):
            group = groups.get(meta["group"]) or groups.setdefault(meta["group"],
                                                                   parser.add_argument_group(meta["group"]))
        else:  # the caller's argument group (vLLM's generate.py does this): argparse deprecates nesting
            group = parser
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


def check_choices(obj: Any) -> None:
    """An option with a fixed set of values (``opt(choices=...)``) refuses any other, given as a
    keyword too (its flag's parser refuses it on the command line): LLM(logprobs_mode="raw")
    would otherwise run as the default. Unset (None, or "" where the default is None) passes."""
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        value = getattr(obj, f.name)
        if choices is None or value is None or (value == "" and f.default is None):
            continue
        if isinstance(value, bool) or value not in choices:
            raise ConfigError(f"{f.name} must be one of {choices}, got {value!r}")


def check_switches(obj: Any) -> None:
    """An on/off option (annotated ``bool``) takes True or False (None where it is optional):
    LLM(enforce_eager="false") would otherwise read as on, any non-empty string being true."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kinds = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        value = getattr(obj, f.name)
        if kinds - {type(None)} != {bool} or isinstance(value, bool) or (value is None and type(None) in kinds):
            continue
        raise ConfigError(f"{f.name} must be True or False, got {value!r}")


def log_no_effect(obj: Any) -> None:
    """One notice per option that is set but has no effect here. Called once, by the entry
    point (LLM, serve, LLMEngine / AsyncLLM.from_engine_args: EngineArgs.log_notices), not
    wherever a config is built (engine-core processes build it too)."""
    for name, _ in _changed(obj):
        if name in NO_EFFECT:
            logger.warning("%s has no effect: %s.", flag_name(name), NO_EFFECT[name])


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


# vLLM's EngineArgs / LLM keyword arguments that pagedlm has no option for. A vLLM script may
# pass them (often at their defaults): the default, or a value that means the same here, is
# accepted and changes nothing; any other value is refused in one line naming the option
# (not a TypeError "unexpected keyword"). Names that are simply not vLLM's stay a TypeError.
_MM = "multimodal input (pagedlm serves text-only models)"
_EPLB = "expert-parallel load balancing (--enable-expert-parallel places the experts statically, in contiguous runs)"
_DP = "multi-node / externally load-balanced data parallelism (data_parallel_size runs local engine cores)"
_PA = "prompt adapters (removed from vLLM too)"
_POOL = "tokenizer pools (removed from vLLM too; tokenization runs in the API process)"
_MAMBA = "Mamba (state-space) models"
VLLM_ONLY_OPTIONS: dict[str, tuple[tuple[Any, ...], str]] = {
    # name: (values that change nothing, what a different value would need)
    "additional_config": ((None, {}), "platform plugins' additional_config"),
    "aggregate_engine_logging": ((False,), "per-engine-core stats logging"),
    "all2all_backend": ((None,), "expert-parallel all-to-all backends"),
    "allowed_local_media_path": ((None, ""), _MM),
    "allowed_media_domains": ((None, []), _MM),
    "code_revision": ((None,), "a separate Hub revision for the model code"),
    "collect_detailed_traces": ((None, []), "OpenTelemetry tracing"),
    "config_format": (("auto", "hf"), "model configs other than Hugging Face's config.json"),
    "data_parallel_address": ((None,), _DP),
    "data_parallel_backend": (("mp",), "data-parallel backends other than local processes"),
    "data_parallel_hybrid_lb": ((False,), _DP),
    "data_parallel_rank": ((None,), _DP),
    "data_parallel_rpc_port": ((None,), _DP),
    "data_parallel_size_local": ((None,), _DP),
    "data_parallel_start_rank": ((None,), _DP),
    "dbo_decode_token_threshold": ((32,), "dual-batch overlap"),
    "dbo_prefill_token_threshold": ((512,), "dual-batch overlap"),
    "decode_context_parallel_size": ((1,), "decode context parallelism"),
    "default_mm_loras": ((None, {}), _MM),
    "disable_chunked_mm_input": ((False,), _MM),
    "disable_hybrid_kv_cache_manager": ((False,), "choosing the KV cache manager"),
    "disable_mm_preprocessor_cache": ((False,), _MM),
    "disable_nccl_for_dp_synchronization": ((False,), "choosing how data-parallel ranks synchronise"),
    "enable_dbo": ((False,), "dual-batch overlap"),
    "enable_eplb": ((False,), _EPLB),
    "enable_lora_bias": ((False,), "LoRA adapters with bias terms"),
    "enable_mm_embeds": ((False,), _MM),
    "enable_multimodal_encoder_data_parallel": ((False,), _MM),
    "enable_prompt_adapter": ((False,), _PA),
    "eplb_config": ((None, {}), _EPLB),
    "eplb_log_balancedness": ((False,), _EPLB),
    "eplb_step_interval": ((3000,), _EPLB),
    "eplb_window_size": ((1000,), _EPLB),
    "expert_placement_strategy": (("linear",), _EPLB),
    "external_parameters": ((None, {}), "external scheduler parameters"),
    "fully_sharded_loras": ((False,), "fully sharded LoRA layers"),
    "guided_decoding_disable_additional_properties": ((None, False), "engine-wide structured-output settings "
                                                      "(set disable_additional_properties per request)"),
    "guided_decoding_disable_any_whitespace": ((None, False), "engine-wide structured-output settings "
                                               "(set disable_any_whitespace per request)"),
    "guided_decoding_disable_fallback": ((None, False), "structured-output backend fallback (xgrammar is the "
                                         "only backend)"),
    "hf_config_path": ((None,), "a model config read from another path"),
    "ignore_patterns": ((None, [], "original/**/*", ["original/**/*"]), "choosing which weight files to ignore"),
    "interleave_mm_strings": ((False,), _MM),
    "io_processor_plugin": ((None,), "IO processor plugins"),
    "kv_events_config": ((None,), "KV cache event publishing"),
    "kv_sharing_fast_prefill": ((False,), "cross-layer KV sharing"),
    "kv_transfer_config": ((None,), "KV cache transfer (disaggregated prefill)"),
    "limit_mm_per_prompt": ((None, {}), _MM),
    "logits_processor_pattern": ((None,), "per-request logits processors named in requests (load them at start-up "
                                 "with --logits-processors; requests configure them with extra_args / vllm_xargs)"),
    "long_lora_scaling_factors": ((None,), "long-context LoRA"),
    "lora_dtype": ((None, "auto"), "a LoRA dtype other than the model's"),
    "lora_extra_vocab_size": ((0, 256), "LoRA adapters with extra vocabulary"),
    "mamba_block_size": ((None,), _MAMBA),
    "mamba_cache_dtype": (("auto",), _MAMBA),
    "mamba_ssm_cache_dtype": (("auto",), _MAMBA),
    "max_prompt_adapter_token": ((0,), _PA),
    "max_prompt_adapters": ((1,), _PA),
    "media_io_kwargs": ((None, {}), _MM),
    "mm_encoder_attn_backend": ((None,), _MM),
    "mm_encoder_tp_mode": (("weights",), _MM),
    "mm_processor_cache_gb": ((4, 4.0), _MM),
    "mm_processor_cache_type": ((None, "lru"), _MM),
    "mm_processor_kwargs": ((None, {}), _MM),
    "mm_shm_cache_max_object_size_mb": ((128,), _MM),
    "model_loader_extra_config": ((None, {}), "model loader plugins' extra config"),
    "num_lookahead_slots": ((0,), "lookahead slots (speculative decoding sizes them itself: speculative_config)"),
    "num_redundant_experts": ((0,), _EPLB),
    "num_scheduler_steps": ((1,), "multi-step scheduling (removed from vLLM too)"),
    "num_speculative_tokens": ((None,), "speculation set by this old vLLM name (use speculative_config)"),
    "otlp_traces_endpoint": ((None,), "OpenTelemetry tracing"),
    "override_attention_dtype": ((None,), "an attention dtype other than the model's"),
    "override_neuron_config": ((None, {}), "AWS Neuron devices"),
    "preemption_mode": ((None, "recompute"), "preemption by swapping (pagedlm preempts by recompute)"),
    "prefix_caching_hash_algo": (("sha256",), "prefix-cache hash algorithms other than sha256"),
    "pt_load_map_location": (("cpu",), "a map_location for .bin weights"),
    "qlora_adapter_name_or_path": ((None,), "QLoRA adapters"),
    "ray_workers_use_nsight": ((False,), "Nsight profiling of Ray workers"),
    "safetensors_load_strategy": (("lazy",), "safetensors load strategies"),
    "scheduler_cls": ((None, "vllm.core.scheduler.Scheduler", "vllm.v1.core.sched.scheduler.Scheduler"),
                      "custom scheduler classes"),
    "scheduler_delay_factor": ((0, 0.0), "a scheduler delay (vLLM V0's scheduler)"),
    "show_hidden_metrics_for_version": ((None,), "hidden deprecated metrics"),
    "skip_mm_profiling": ((False,), _MM),
    "speculative_model": ((None,), "speculation set by this old vLLM name (use speculative_config)"),
    "tokenizer_pool_extra_config": ((None, {}), _POOL),
    "tokenizer_pool_size": ((0,), _POOL),
    "tokenizer_pool_type": (("ray",), _POOL),
    "video_pruning_rate": ((None, 0, 0.0), _MM),
    "worker_cls": (("auto",), "custom worker classes"),
    "worker_extension_cls": ((None, ""), "worker extension classes"),
}

# vLLM keyword arguments that change nothing in pagedlm whatever their value (vLLM's own no-ops
# among them): accepted with a one-line notice.
VLLM_NO_EFFECT: dict[str, str] = {
    "use_v2_block_manager": "pagedlm has one block manager (vLLM itself ignores it)",
    "disable_async_output_proc": "pagedlm has no separate async output processing (vLLM V1 ignores it too)",
    "multi_step_stream_outputs": "pagedlm has no multi-step scheduling (vLLM V1 ignores it too)",
    "enable_reasoning": "--reasoning-parser alone turns reasoning parsing on (vLLM dropped enable_reasoning too)",
}

# vLLM's other names for pagedlm options.
VLLM_RENAMED: dict[str, str] = {
    "override_pooler_config": "pooler_config",
}
# vLLM's top-level names for keys of a pagedlm option that is a dict: merged into it.
VLLM_MERGED: dict[str, str] = {
    "rope_scaling": "hf_overrides",
    "rope_theta": "hf_overrides",
    "cudagraph_capture_sizes": "compilation_config",
    "max_cudagraph_capture_size": "compilation_config",
}


def translate_vllm_kwargs(kwargs: dict[str, Any], known: set[str]) -> dict[str, Any]:
    """vLLM's keyword arguments as pagedlm options: renamed ones renamed, rope_scaling / rope_theta
    into hf_overrides and the CUDA-graph sizes into compilation_config (as vLLM does),
    vLLM-only ones at a no-op value dropped, at any other value refused with a ConfigError.
    Names neither pagedlm's nor vLLM's are left for the caller's TypeError."""
    if not any(k in VLLM_ONLY_OPTIONS or k in VLLM_NO_EFFECT or k in VLLM_RENAMED or k in VLLM_MERGED
               for k in kwargs):
        return kwargs
    out = {k: v for k, v in kwargs.items() if k in known}
    for name, value in kwargs.items():
        if name in known:
            continue
        if name in VLLM_RENAMED:
            target = VLLM_RENAMED[name]
            if value is None:
                continue
            if out.get(target) is not None and out[target] != value:
                raise ConfigError(f"{name}={value!r} and {target}={out[target]!r} disagree: they are the same "
                                  f"option ({name} is vLLM's name for {target}); give one of them")
            out[target] = value
        elif name in VLLM_MERGED:
            if value is None or value == {}:  # vLLM's defaults
                continue
            out[VLLM_MERGED[name]] = _merge_into(out.get(VLLM_MERGED[name]), name, value, VLLM_MERGED[name])
        elif name in VLLM_NO_EFFECT:
            logger.warning("%s has no effect: %s.", name, VLLM_NO_EFFECT[name])
        elif name in VLLM_ONLY_OPTIONS:
            check_vllm_only(name, value, VLLM_ONLY_OPTIONS)
        else:
            out[name] = value  # the caller's TypeError names it
    return out


def _merge_into(target: dict[str, Any] | None, key: str, value: Any, target_name: str) -> dict[str, Any]:
    if target is not None and not isinstance(target, dict):
        raise ConfigError(f"{key}={value!r} cannot be merged into {target_name}={target!r} (not a dict); "
                          f"give it as {target_name}={{{key!r}: ...}} instead")
    target = dict(target or {})
    if key in target and target[key] != value:
        raise ConfigError(f"{key}={value!r} and {target_name}[{key!r}]={target[key]!r} disagree; give one of them")
    target[key] = value
    return target


def is_no_op(value: Any, no_op: tuple[Any, ...]) -> bool:
    """Whether a vLLM-only option's value is one of the values that change nothing (True is not 1)."""
    return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in no_op)


def check_vllm_only(name: str, value: Any, table: dict[str, tuple[tuple[Any, ...], str]], shown: str | None = None
                    ) -> None:
    """A vLLM-only option at one of its no-op values passes; any other value is refused in one
    line naming it (``shown``: how to name it, e.g. as a flag; default: the keyword)."""
    no_op, feature = table[name]
    if not is_no_op(value, no_op):
        raise ConfigError(f"{shown or name}={value!r}: {feature} is not supported by pagedlm; remove the option "
                          f"(a vLLM option pagedlm accepts only at its default, {no_op[0]!r}).")


# vLLM's `vllm serve` flags (its frontend's, vllm/entrypoints/openai/cli_args.py) that pagedlm
# serve has no option for: as VLLM_ONLY_OPTIONS, accepted at vLLM's default, any other value
# refused in one line naming the flag. Not LLM(**kwargs) names: the engine never sees them.
_SUPERVISOR = "the data-parallel supervisor of multi-port external load balancing"
VLLM_ONLY_SERVER_OPTIONS: dict[str, tuple[tuple[Any, ...], str]] = {
    "trust_request_chat_template": ((False,), "chat templates sent in a request (a request's chat_template is "
                                    "refused; start the server with --chat-template)"),
    "default_chat_template_kwargs": ((None, {}), "server-wide default chat_template_kwargs (send "
                                     "chat_template_kwargs in each request)"),
    "exclude_tools_when_tool_choice_none": ((False,), "leaving the tools out of the prompt when tool_choice is "
                                            "'none'"),
    "tool_parser_plugin": (("",), "tool parser plugins (the built-in parsers: --tool-call-parser)"),
    "tool_server": ((None,), "tool servers for the Responses API (built-in or MCP tools)"),
    "log_config_file": ((None,), "a logging configuration file"),
    "enable_per_request_metrics": ((False,), "per-request timing metrics in responses"),
    "enable_server_load_tracking": ((False,), "server load tracking (the /load endpoint)"),
    "enable_tokenizer_info_endpoint": ((False,), "the /tokenizer_info endpoint"),
    "enable_log_deltas": ((True,), "logging request outputs"),
    "cohere_is_reasoning_model": ((True,), "Cohere's /cohere/v2/chat endpoint"),
    "cohere_format": (("cmd4",), "Cohere prompt formats (--tokenizer-mode cohere)"),
    "log_error_stack": ((False,), "logging the stack trace of error responses"),
    "tokens_only": ((False,), "a tokens-only (Tokens In<>Out) server"),
    "fingerprint_mode": (("full",), "choosing the system_fingerprint of responses"),
    "fingerprint_value": ((None,), "a custom system_fingerprint"),
    "data_parallel_supervisor_port": ((9256,), _SUPERVISOR),
    "dp_supervisor_probe_interval_s": ((5.0,), _SUPERVISOR),
    "dp_supervisor_probe_timeout_s": ((5.0,), _SUPERVISOR),
    "dp_supervisor_probe_failure_threshold": ((3,), _SUPERVISOR),
    "disable_access_log_for_endpoints": ((None, ""), "leaving chosen endpoints out of the access log "
                                         "(--disable-uvicorn-access-log turns it off altogether)"),
    "enable_ssl_refresh": ((False,), "reloading the TLS certificate when its files change"),
    "ssl_ciphers": ((None,), "choosing the TLS cipher suites"),
    "middleware": (([], None), "extra ASGI middleware"),
    "h11_max_incomplete_event_size": ((4194304,), "changing the HTTP parser's limits"),
    "h11_max_header_count": ((256,), "changing the HTTP parser's limits"),
    "enable_offline_docs": ((False,), "offline API docs"),
    "enable_flash_late_interaction": ((True,), "late-interaction (MaxSim) scoring"),
    "headless": ((False,), "headless mode (multi-node data parallelism)"),
    "grpc": ((False,), "a gRPC server"),
    "prompt_adapters": ((None, []), _PA),
}

# The serve flags of vLLM-only names (their dest: VLLM_DEST + name, so no dataclass reads them).
VLLM_DEST = "vllm_only."


def parse_value(text: str) -> Any:
    """A command-line value given without a type (a vLLM-only flag's, a JSON option's dotted key):
    JSON where it parses (8, true, {...}), else a size with a suffix (8g), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return human_readable_int(text)
    except argparse.ArgumentTypeError:
        return text


def add_vllm_only_args(parser: argparse.ArgumentParser, server: bool = True) -> None:
    """One hidden flag per vLLM option pagedlm serve lacks (the tables above), so ``vllm serve``'s
    command line gets the table's answer instead of argparse's bare "unrecognized arguments".
    ``server=False``: the engine's only (``run-batch`` has no HTTP server)."""
    names = [*VLLM_ONLY_OPTIONS, *VLLM_NO_EFFECT, *VLLM_RENAMED, *VLLM_MERGED,
             *(VLLM_ONLY_SERVER_OPTIONS if server else ())]
    for name in names:
        flag = flag_name(name)
        if flag in parser._option_string_actions:
            continue
        no_op = (VLLM_ONLY_OPTIONS.get(name) or VLLM_ONLY_SERVER_OPTIONS.get(name) or ((None,), ""))[0]
        kwargs: dict[str, Any] = {"dest": VLLM_DEST + name, "default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        if name in VLLM_NO_EFFECT or any(isinstance(v, bool) for v in no_op):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif name == "cudagraph_capture_sizes" or any(isinstance(v, list) for v in no_op):
            kwargs.update(nargs="*", type=parse_value)
        elif name.endswith(("_config", "_kwargs", "_loras")) or name in ("rope_scaling", "limit_mm_per_prompt",
                                                                        "external_parameters"):
            kwargs.update(type=json_or_dict, metavar="JSON")
        else:
            kwargs["type"] = parse_value
        parser.add_argument(flag, **kwargs)


def take_vllm_only_args(values: dict[str, Any], engine_fields: set[str]) -> None:
    """Pop the vLLM-only flags out of parsed ``values`` (in place): refuse a value that is not a
    no-op (ConfigError naming the flag), log the no-effect ones, and hand renamed / merged ones
    to pagedlm's own options (as LLM(**kwargs) does)."""
    given = {k[len(VLLM_DEST):]: values.pop(k) for k in list(values) if k.startswith(VLLM_DEST)}
    engine_side: dict[str, Any] = {}
    for name, value in given.items():
        if name in VLLM_ONLY_SERVER_OPTIONS:
            check_vllm_only(name, value, VLLM_ONLY_SERVER_OPTIONS, flag_name(name))
        elif name in VLLM_ONLY_OPTIONS:
            check_vllm_only(name, value, VLLM_ONLY_OPTIONS, flag_name(name))
        elif name in VLLM_NO_EFFECT:
            if value:
                logger.warning("%s has no effect: %s.", flag_name(name), VLLM_NO_EFFECT[name])
        else:
            engine_side[name] = value
    if engine_side:
        known = {k: values[k] for k in engine_fields if k in values}
        values.update(translate_vllm_kwargs({**known, **engine_side}, engine_fields))
