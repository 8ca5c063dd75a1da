"""EngineArgs: the user-facing engine settings (LLM kwargs and CLI flags) -> EngineConfig.

Every option is one field declared with ``opt`` (help line and ``serve --help`` group beside
it); pagedlm.arg_utils turns the fields into flags and refuses what is not built yet.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import random
from pathlib import Path
from dataclasses import dataclass
from typing import Any, ClassVar

from pagedlm.arg_utils import (
    add_dataclass_args,
    check_choices,
    check_switches,
    dataclass_kwargs,
    human_readable_int,
    json_object_or_int,
    log_no_effect,
    opt,
    refuse_unsupported,
    translate_vllm_kwargs,
)
from pagedlm.attention.kv_cache_dtype import KV_CACHE_DTYPES, resolve_kv_cache_dtype
from pagedlm.compilation import compilation_notices, resolve_cuda_graph_sizes
from pagedlm.config_options import as_option_dict
from pagedlm.config import (
    CacheConfig,
    ConfigError,
    DeviceConfig,
    EngineConfig,
    ModelConfig,
    SchedulerConfig,
    StructuredOutputsConfig,
    derive_max_model_len,
    is_large_gpu,
    load_hf_config,
    read_chat_template,
    resolve_parallel_config,
    verify_parallel_shapes,
    resolve_device,
    resolve_dtype,
)
from pagedlm.feature_checks import (
    check_custom_logits_fit,
    verify_pipeline,
    verify_prompt_embeds,
    verify_transformers_backend,
    verify_transformers_speculation,
)
from pagedlm.hf_overrides import apply_hf_overrides
from pagedlm.spec_decode.config import check_speculation_fits, resolve_speculative_config
from pagedlm.lora.config import build_lora_config
from pagedlm.engine.logits_processor_loading import engine_logits_processors
from pagedlm.entrypoints.openai.reasoning import REASONING_PARSERS
from pagedlm.pooling_config import (
    check_pooling_kind,
    requested_runner,
    resolve_pooling,
    sentence_transformers_max_len,
    whole_prompt_batched_tokens,
)

MODEL, LOAD, CACHE, SCHED, PARALLEL, DEVICE, LORA, SPEC, OBS = (
    "Model", "Model loading", "KV cache", "Scheduler", "Parallelism", "Device", "LoRA", "Speculative decoding",
    "Observability")
LONG_LEN_ENV_VARS = ("PAGEDLM_ALLOW_LONG_MAX_MODEL_LEN", "VLLM_ALLOW_LONG_MAX_MODEL_LEN")


# "pt": pytorch_model*.bin; "gguf": a .gguf file ("auto" picks it from the path too).
LOAD_FORMATS = ("auto", "safetensors", "pt", "gguf", "dummy", "bitsandbytes")


def default_async_scheduling(device: str, pipeline_parallel_size: int) -> bool:
    """On by default on CUDA (with or without speculation), except with pipeline stages
    (their batch queue overlaps steps instead)."""
    return device == "cuda" and pipeline_parallel_size == 1


def _takes_vllm_kwargs(cls: type) -> type:
    """EngineArgs(**kwargs) takes vLLM's names too (arg_utils.translate_vllm_kwargs): renamed ones,
    and vLLM-only ones at their defaults; other values of those are refused by name."""
    init, known = cls.__init__, set(cls.__dataclass_fields__)

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **translate_vllm_kwargs(kwargs, known))

    cls.__init__ = __init__
    return cls


@_takes_vllm_kwargs
@dataclass
class EngineArgs:
    model: str = opt(None, "checkpoint directory, .gguf file or Hugging Face Hub id (or give it as the positional "
                     "MODEL)", MODEL)
    tokenizer: str | None = opt(None, "tokenizer directory or Hub id (default: the model's; for GGUF its metadata)",
                                MODEL)
    tokenizer_mode: str = opt("auto", "auto (hf): the fast tokenizer where the checkpoint has one; slow: the "
                              "Python one; mistral is refused (it needs mistral_common)", MODEL,
                              choices=["auto", "hf", "slow", "mistral"])
    trust_remote_code: bool = opt(False, "let transformers run code shipped with the checkpoint (config, "
                                  "tokenizer)", MODEL)
    served_model_name: str | list[str] | None = opt(None, "name(s) clients use in 'model'; the first is "
                                                    "reported (default: the model path)", MODEL)
    dtype: str = opt("auto", "weight/activation dtype: auto (float32 on CPU, the checkpoint's 16-bit type on "
                     "GPU), float32, float16, bfloat16", MODEL)
    seed: int | None = opt(0, "random seed of the engine (None: a random one, logged)", MODEL)
    max_model_len: int | None = opt(None, "context length (prompt + output; 32k = 32000, 32K = 32768); default: "
                                    "the model's trained context", MODEL, parse=human_readable_int)
    allow_long_max_model_len: bool = opt(False, "allow --max-model-len above the model's trained context "
                                         "(also env PAGEDLM_/VLLM_ALLOW_LONG_MAX_MODEL_LEN=1)", MODEL)
    disable_sliding_window: bool = opt(False, "cap the context at the model's sliding window, so every layer "
                                       "attends to the whole sequence (no effect on models without one)", MODEL)
    max_logprobs: int = opt(20, "largest logprobs / prompt_logprobs a request may ask for (-1: no cap but the "
                            "vocabulary size)", MODEL)
    logprobs_mode: str = opt("raw_logprobs", "what logprobs report: raw_logprobs (the model's, before any "
                             "sampling setting touches the logits; vLLM's default), raw_logits, processed_logprobs "
                             "or processed_logits (after the penalties, temperature, top-k/top-p the token is "
                             "drawn with)", MODEL,
                             choices=["raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits"])
    model_impl: str = opt("auto", "model implementation: auto (pagedlm's own, else the transformers backend for "
                          "an architecture it has none for), vllm / pagedlm (pagedlm's own only), transformers "
                          "(the Hugging Face model class with pagedlm's paged attention)", MODEL,
                          choices=["auto", "vllm", "pagedlm", "transformers", "terratorch"])
    skip_tokenizer_init: bool = opt(False, "run without a tokenizer: prompts are token ids, outputs carry token "
                                    "ids and empty text (the server: token-id completions, return_token_ids)",
                                    MODEL)
    enable_prompt_embeds: bool = opt(False, "accept prompts given as embeddings ({'prompt_embeds': tensor "
                                     "[num_tokens, hidden]} offline, base64 torch.save payloads in /v1/completions' "
                                     "prompt_embeds); Llama-family and MoE decoders, one pipeline stage, no "
                                     "speculative decoding", MODEL)
    enable_sleep_mode: bool = opt(False, "vLLM's sleep mode (LLM.sleep / wake_up)", CACHE)
    chat_template: str | None = opt(None, "chat template file or Jinja text (default: the tokenizer's)", MODEL)
    hf_overrides: dict[str, Any] | None = opt(None, "JSON object merged into the model's Hugging Face config "
                                              "(nested objects merge into nested configs)", MODEL)
    structured_outputs_config: dict[str, Any] | None = opt(
        None, "vLLM's structured-output settings as JSON: backend 'auto' or 'xgrammar' (the one built in), "
        "reasoning_parser (as --reasoning-parser)", MODEL)
    guided_decoding_backend: str | None = opt(None, "vLLM's older name for the structured-output backend: auto or "
                                              "xgrammar", MODEL, choices=["auto", "xgrammar"])
    reasoning_parser: str | None = opt(None, "split <think>...</think> into reasoning_content; structured output "
                                       "constraints apply after it", MODEL, choices=sorted(REASONING_PARSERS))
    logits_processors: list[Any] | None = opt(
        None, "custom logits processors (vLLM V1's interface): 'module:Class' names of LogitsProcessor subclasses "
        "(LLM() also takes the classes); requests configure them with extra_args (HTTP: vllm_xargs)", MODEL,
        nargs="+", parse=str)
    generation_config: str = opt("auto", "'auto': sampling defaults from the model's generation_config.json; "
                                 "'vllm': ignore it; or a directory holding a generation_config.json", MODEL)
    override_generation_config: dict[str, Any] | None = opt(
        None, "sampling defaults as JSON by their generation-config names (temperature, top_p, top_k, min_p, "
        "repetition_penalty, max_new_tokens), over the generation config's (alone with --generation-config vllm)",
        MODEL)
    runner: str = opt("auto", "generate text, or pool hidden states into embeddings (auto: from the checkpoint)",
                      MODEL, choices=["auto", "generate", "pooling"])
    convert: str = opt("auto", "vLLM's model conversion: embed runs the checkpoint as a pooling (embedding) model "
                       "(as --runner pooling); classify asks for a sequence-classification checkpoint's head (as "
                       "--runner pooling); auto and none leave the runner as it is", MODEL,
                       choices=["auto", "none", "embed", "classify"])
    task: str = opt("auto", "vLLM's older way to pick the runner: generate, or embed / embedding, or classify / "
                    "score (a sequence-classification checkpoint) (as --runner pooling)", MODEL,
                    choices=["auto", "generate", "embed", "embedding", "classify", "score"])
    pooler_config: dict[str, Any] | None = opt(None, 'pooling settings, e.g. {"pooling_type": "MEAN", "normalize": '
                                               'false}', MODEL, flags=("--override-pooler-config",))
    quantization: str | None = opt(None, "weight quantization method (default: the checkpoint's "
                                   "quantization_config); see docs/quantization.md", MODEL, flags=("-q",))
    enforce_eager: bool = opt(False, "never use CUDA graphs", MODEL)
    load_format: str = opt("auto", "auto, safetensors, pt (pytorch_model*.bin), gguf, or dummy (random weights of "
                           "the real shapes); bitsandbytes (older vLLM's flag) reads safetensors", LOAD,
                           choices=list(LOAD_FORMATS))
    revision: str | None = opt(None, "Hub branch, tag or commit of the model", LOAD)
    tokenizer_revision: str | None = opt(None, "Hub revision of the tokenizer", LOAD)
    download_dir: str | None = opt(None, "Hugging Face cache directory to download to / load from", LOAD)
    hf_token: str | bool | None = opt(None, "Hugging Face Hub token for gated or private models; the flag alone "
                                      "uses the token `hf auth login` stored (default: huggingface_hub's own, "
                                      "HF_TOKEN)", LOAD, parse=str, nargs="?", const=True, secret=True)
    block_size: int | None = opt(16, "tokens per KV cache block", CACHE)
    gpu_memory_utilization: float = opt(0.9, "fraction of GPU memory for weights, activations and KV cache "
                                        "(GPU only; on CPU see --kv-cache-memory-bytes)", CACHE)
    kv_cache_memory_bytes: int | None = opt(None, "KV cache size in bytes, e.g. 8G (8 GiB; overrides "
                                            "--gpu-memory-utilization; CPU default: a quarter of free RAM, at most "
                                            "4 GiB)", CACHE, parse=human_readable_int)
    num_gpu_blocks_override: int | None = opt(None, "fix the number of KV cache blocks", CACHE)
    kv_cache_dtype: str = opt("auto", "KV cache element type: auto (the model dtype), fp8 (= fp8_e4m3) or fp8_e5m2: "
                              "half the bytes, about twice the KV blocks; per-layer k/v scales from the checkpoint, "
                              "else 1.0", CACHE, choices=list(KV_CACHE_DTYPES))
    calculate_kv_scales: bool = opt(False, "with an fp8 KV cache: each layer's k_scale / v_scale from the first "
                                    "batch of requests (max |k| / 200, max |v| / 100, as vLLM), instead of the "
                                    "checkpoint's or 1.0", CACHE)
    enable_prefix_caching: bool | None = opt(True, "reuse the KV blocks of shared prompt prefixes", CACHE)
    swap_space: float = opt(4, "CPU swap space in GiB (vLLM; no effect here)", CACHE)
    cpu_offload_gb: float = opt(0, "GiB of weights to offload to CPU", CACHE)
    max_num_seqs: int | None = opt(None, "most sequences in one step (default: 1024 on GPUs of 70 GiB or more "
                                   "other than the A100, else 256; vLLM's defaults)", SCHED)
    max_num_batched_tokens: int | None = opt(None, "token budget of one step (default: on GPUs of 70 GiB or more "
                                             "other than the A100 16384 offline and 8192 served, on other GPUs "
                                             "8192, on CPU 2048; 16k = 16000, 16K = 16384)", SCHED,
                                             parse=human_readable_int)
    long_prefill_token_threshold: int = opt(0, "with chunked prefill: at most this many of a request's prompt "
                                            "tokens in one step, so long prompts share steps with others (0: "
                                            "no limit but the step budget)", SCHED)
    max_num_partial_prefills: int = opt(1, "vLLM V0's concurrent partial prefills (only 1 here)", SCHED)
    max_long_partial_prefills: int = opt(1, "vLLM V0's concurrent long partial prefills (only 1 here)", SCHED)
    enable_chunked_prefill: bool | None = opt(None, "split long prompts over steps (default on; off: a prompt is "
                                              "scheduled whole, max_num_batched_tokens >= max_model_len)", SCHED)
    async_scheduling: bool | None = opt(None, "overlap scheduling with the device step (default: on for CUDA; "
                                        "refused with -pp > 1, whose batch queue overlaps instead)", SCHED)
    scheduling_policy: str = opt("fcfs", "order of waiting requests: fcfs (arrival), or priority (each request's "
                                 "priority, lowest value first, then arrival; preemption takes the lowest first)",
                                 SCHED, choices=["fcfs", "priority"])
    stream_interval: int = opt(1, "streamed outputs carry this many new tokens each (the first and the last "
                               "come at once; fewer, larger chunks); a request's stream_interval may raise it",
                               SCHED)
    tensor_parallel_size: int = opt(1, "tensor-parallel ranks", PARALLEL, flags=("-tp",))
    enable_expert_parallel: bool = opt(False, "MoE layers: each tensor-parallel rank holds a contiguous share of "
                                       "the experts whole (vLLM's expert parallelism) instead of a slice of every "
                                       "expert; no effect at tensor_parallel_size 1", PARALLEL)
    pipeline_parallel_size: int = opt(1, "pipeline-parallel stages, up to one batch per stage in flight", PARALLEL,
                                      flags=("-pp",))
    data_parallel_size: int = opt(1, "engine-core processes, each with its own device(s); requests go to the "
                                  "least-loaded one", PARALLEL, flags=("-dp",))
    distributed_executor_backend: str | None = opt(None, "how ranks run: uni (one rank, in process), mp (a process "
                                                   "per rank), ray (Ray actors, ranks may span hosts); default mp, or "
                                                   "ray when the world is larger than this host's GPUs", PARALLEL,
                                                   choices=["mp", "ray", "uni", "external_launcher"])
    disable_custom_all_reduce: bool = opt(False, "vLLM's custom all-reduce switch (no effect here)", PARALLEL)
    device: str = opt("auto", "auto (CUDA when available), cpu or cuda", DEVICE, choices=["auto", "cpu", "cuda"])
    max_seq_len_to_capture: int = opt(8192, "vLLM's CUDA-graph length limit (no effect here)", DEVICE)
    cuda_graph_sizes: list[int] | None = opt(None, "decode batch sizes captured as CUDA graphs: one value is the "
                                             "largest of the default list (1, 2, 4, every 8 to 256, every 16 "
                                             "above), several are the list (default: up to max_num_seqs, at most "
                                             "1024)", DEVICE)
    compilation_config: dict[str, Any] | None = opt(
        None, "vLLM's compilation settings as JSON, or an optimization level (-O3): cudagraph_capture_sizes, "
        "max_cudagraph_capture_size and cudagraph_mode (NONE: no graphs; decode steps replay full graphs "
        "otherwise) work; torch.compile settings have no effect (a notice), other keys are refused", DEVICE,
        flags=("-O", "-cc"), parse=json_object_or_int)
    enable_lora: bool = opt(False, "serve LoRA adapters (PEFT format)", LORA)
    max_loras: int = opt(1, "LoRA adapters resident on the device, the most one step mixes", LORA)
    max_lora_rank: int = opt(16, "largest LoRA rank an adapter may have", LORA)
    max_cpu_loras: int | None = opt(None, "LoRA adapters kept loaded in CPU memory, an LRU (default: max_loras)",
                                    LORA)
    speculative_config: dict[str, Any] | None = opt(None, "speculative decoding settings as JSON", SPEC)
    disable_log_stats: bool = opt(False, "no periodic stats line (pagedlm's only one is speculative decoding's "
                                  "acceptance line; metrics stay on /metrics)", OBS)
    disable_cascade_attn: bool = opt(False, "vLLM's cascade-attention switch (no effect here)", DEVICE)
    max_parallel_loading_workers: int | None = opt(None, "vLLM's weight-loading worker count (no effect here)", LOAD)
    # Not an option: who builds the engine (vLLM's usage context), which picks the default step
    # budget on large GPUs (``_batch_defaults``): "llm" here, "server" in ServerEngineArgs.
    usage_context: ClassVar[str] = "llm"

    def __post_init__(self) -> None:
        # vLLM's None for these is "the default" (as code that passes every setting through,
        # LLM(block_size=None, enable_prefix_caching=None), relies on); None is not "off".
        for name in ("block_size", "enable_prefix_caching"):
            if getattr(self, name) is None:
                setattr(self, name, type(self).__dataclass_fields__[name].default)
        # vLLM's config objects (CompilationConfig(...), PoolerConfig(...), StructuredOutputsConfig(...))
        # are their dict form from here on: one place honours or refuses each field.
        for name in ("compilation_config", "pooler_config", "structured_outputs_config"):
            setattr(self, name, as_option_dict(getattr(self, name)))

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, groups: dict[str, Any] | None = None) -> argparse.ArgumentParser:
        add_dataclass_args(parser, EngineArgs, groups if groups is not None else {})
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineArgs":
        return cls(**dataclass_kwargs(cls, args))

    def served_model_names(self) -> list[str]:
        names = self.served_model_name
        if not names:
            return [self.model]
        return [names] if isinstance(names, str) else list(names)

    def _verify(self) -> None:
        if not self.model:
            raise ConfigError("no model given: pass a checkpoint directory (LLM(model=...) or serve MODEL)")
        refuse_unsupported(self)
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128):
            raise ConfigError(f"block_size must be a power of two up to 128, got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.tokenizer_mode == "mistral":
            raise ConfigError("--tokenizer-mode mistral needs the mistral_common tokenizer, which pagedlm does not "
                              "use; use auto (the checkpoint's Hugging Face tokenizer) or slow")
        if self.tokenizer_mode not in ("auto", "hf", "slow"):
            raise ConfigError(f"tokenizer_mode {self.tokenizer_mode!r} is not supported: use auto (or hf: the "
                              "checkpoint's Hugging Face tokenizer, fast where it has one) or slow")
        if self.long_prefill_token_threshold < 0:
            raise ConfigError("long_prefill_token_threshold must be non-negative, got "
                              f"{self.long_prefill_token_threshold}")
        if self.max_num_seqs is not None and self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        dp = self.data_parallel_size
        if isinstance(dp, bool) or not isinstance(dp, int) or dp < 1:  # refused later, when the cores start
            raise ConfigError(f"data_parallel_size must be a positive integer, got {dp!r}")
        if self.load_format not in LOAD_FORMATS:
            raise ConfigError(f"load_format must be one of {list(LOAD_FORMATS)}, got {self.load_format!r}")
        if self.load_format == "bitsandbytes":  # older vLLM's flag for bnb checkpoints: safetensors here
            self.load_format = "safetensors"
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ConfigError("num_gpu_blocks_override must be at least 1")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes < 1:
            raise ConfigError(f"kv_cache_memory_bytes must be positive, got {self.kv_cache_memory_bytes}")
        self._structured_outputs()  # refuses what it cannot honour (and an unknown reasoning parser)
        self._check_skip_tokenizer_init()
        if isinstance(self.stream_interval, bool) or not isinstance(self.stream_interval, int) \
                or self.stream_interval < 1:
            raise ConfigError(f"stream_interval must be a positive integer, got {self.stream_interval!r}")
        if self.max_logprobs < -1:
            raise ConfigError(f"max_logprobs must be non-negative (or -1: no cap), got {self.max_logprobs}")
        check_choices(self)
        check_switches(self)

    def _batch_defaults(self, device: str) -> tuple[int, int]:
        """(max_num_seqs, max_num_batched_tokens) where they are not given: vLLM's defaults. GPUs
        of 70 GiB or more other than the A100 take larger batches (on an H200, 1,000 x 512/256:
        1024 / 16384 gave 10,375 output tokens/s against 9,689 at 256 / 8192), the offline
        engine a larger step budget than the server (whose steps set its latency)."""
        large = device == "cuda" and is_large_gpu()
        max_seqs = self.max_num_seqs or (1024 if large else 256)
        if self.max_num_batched_tokens is not None:
            return max_seqs, self.max_num_batched_tokens
        if large:
            return max_seqs, 16384 if self.usage_context == "llm" else 8192
        return max_seqs, 8192 if device == "cuda" else 2048

    def _device_config(self, device: str, max_num_seqs: int) -> DeviceConfig:
        sizes = resolve_cuda_graph_sizes(max_num_seqs, self.cuda_graph_sizes, self.compilation_config)
        return DeviceConfig(device=device, enforce_eager=self.enforce_eager, cuda_graph_sizes=sizes)

    def _step_budget(self, max_batched: int, max_model_len: int, pooling: bool) -> tuple[int, bool]:
        """(max_num_batched_tokens, chunked prefill on). Without chunked prefill (pooling, or
        --no-enable-chunked-prefill) a step must hold the longest prompt whole."""
        if max_batched < 1:
            raise ConfigError(f"max_num_batched_tokens must be at least 1, got {max_batched}")
        if self.enable_chunked_prefill and pooling:
            raise ConfigError("enable_chunked_prefill is not supported with runner='pooling' (a pooling request's "
                              "prompt runs in one step); leave it unset")
        if self.enable_chunked_prefill is not False and not pooling:
            return max_batched, True
        why = "with runner='pooling'" if pooling else "with chunked prefill disabled"
        return whole_prompt_batched_tokens(self.max_num_batched_tokens, max_batched, max_model_len, why), False

    def _structured_outputs(self) -> StructuredOutputsConfig:
        """--structured-outputs-config / --guided-decoding-backend, as far as they mean something
        here: the backend is xgrammar ('auto' picks it); other backends and settings are refused."""
        settings = dict(self.structured_outputs_config or {})
        backend = _one_of(settings.pop("backend", None), self.guided_decoding_backend,
                          "structured_outputs_config backend", "guided_decoding_backend") or "auto"
        if backend not in ("auto", "xgrammar"):
            raise ConfigError(f"structured-output backend {backend!r} is not available: pagedlm builds its "
                              "grammars with xgrammar (backend 'auto' or 'xgrammar')")
        reasoning = _one_of(settings.pop("reasoning_parser", None), self.reasoning_parser,
                            "structured_outputs_config reasoning_parser", "reasoning_parser")
        if reasoning not in (None, "", *REASONING_PARSERS):
            raise ConfigError(f"reasoning_parser must be one of {sorted(REASONING_PARSERS)}, got {reasoning!r}")
        if settings:
            raise ConfigError(f"structured_outputs_config: {sorted(settings)} not supported (only 'backend' and "
                              "'reasoning_parser')")
        return StructuredOutputsConfig(reasoning_parser=reasoning or None)

    def _check_skip_tokenizer_init(self) -> None:
        """--skip-tokenizer-init: what needs a tokenizer from start-up is refused here (requests
        that need one are refused by the input processor)."""
        if not self.skip_tokenizer_init:
            return
        if self._structured_outputs().reasoning_parser:
            raise ConfigError("reasoning_parser needs a tokenizer (its markers are tokenized), so it cannot be "
                              "used with skip_tokenizer_init")

    def log_notices(self) -> None:
        """One line per option that is set but has no effect here, once per EngineArgs (the entry
        points call it before they start anything, LLMEngine / AsyncLLM.from_engine_args again)."""
        if getattr(self, "_notices_logged", False):
            return
        self._notices_logged = True
        log_no_effect(self)
        for line in compilation_notices(self.compilation_config):
            logging.getLogger("pagedlm").warning(line)
        if self.disable_log_stats and self.speculative_config is None:
            logging.getLogger("pagedlm").warning("--disable-log-stats has no effect: pagedlm logs no periodic stats "
                                                 "line without speculative decoding; metrics are on /metrics.")
        if self.calculate_kv_scales and not self.kv_cache_dtype.startswith("fp8"):
            logging.getLogger("pagedlm").warning("--calculate-kv-scales has no effect: the KV cache is not fp8 "
                                                 "(--kv-cache-dtype fp8).")
        on_cpu = resolve_device(self.device) == "cpu"
        if self.gpu_memory_utilization != 0.9 and self.kv_cache_memory_bytes is None and on_cpu:
            logging.getLogger("pagedlm").warning(
                "--gpu-memory-utilization has no effect on CPU: the KV cache takes a quarter of free RAM (at most "
                "4 GiB); set its size with --kv-cache-memory-bytes.")
        graph_options = [name for name, is_set in (("--enforce-eager", self.enforce_eager),
                                                   ("--cuda-graph-sizes", self.cuda_graph_sizes is not None),
                                                   ("--compilation-config", self.compilation_config is not None))
                         if is_set]
        if on_cpu and graph_options:
            logging.getLogger("pagedlm").warning("%s: no effect on CPU (CUDA graphs are a GPU feature; CPU steps "
                                                 "always run eagerly).", ", ".join(graph_options))

    def _seed(self) -> int:
        """The engine's seed; None (vLLM's "no fixed seed") draws one, so every rank agrees on it."""
        if self.seed is None:
            seed = random.randrange(2**31)
            logging.getLogger("pagedlm").info("seed=None: the engine's random seed is %d", seed)
            return seed
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer or None, got {self.seed!r}")
        return self.seed

    def _allow_long(self) -> bool:
        return self.allow_long_max_model_len or any(os.environ.get(v, "") in ("1", "true", "True")
                                                    for v in LONG_LEN_ENV_VARS)

    def _model_config(self, device: str) -> ModelConfig:
        """Where the model comes from, its HF config (with --hf-overrides), runner, context
        length, dtype and the rest of what describes the model itself."""
        from pagedlm.layers.quantization import resolve_quantization_name
        from pagedlm.models.generation_config import read_generation_defaults
        from pagedlm.models.multimodal import text_only_overrides
        from pagedlm.models.loader.source import resolve_model_source

        source = resolve_model_source(self.model, self.revision, self.download_dir, self.load_format,
                                      self.tokenizer, self.tokenizer_revision, self.hf_token)
        hf_config = load_hf_config(source.config_dir, self.trust_remote_code)
        apply_hf_overrides(hf_config, text_only_overrides(hf_config, self.hf_overrides))
        if self.model_impl == "terratorch":
            raise ConfigError("model_impl 'terratorch' (the TerraTorch backend) is not supported; use auto, vllm "
                              "(pagedlm's own models) or transformers")
        runner, pooler_config = resolve_pooling(requested_runner(self.convert, self.task, self.runner),
                                                source.model, hf_config,
                                                list(getattr(hf_config, "architectures", None) or []),
                                                self.pooler_config, self.model_impl)
        check_pooling_kind(self.convert, self.task, pooler_config)
        max_model_len = derive_max_model_len(hf_config, self.max_model_len or (
            sentence_transformers_max_len(source.model) if pooler_config else None), self._allow_long(),
            self.disable_sliding_window, _position_offset(hf_config, self.model_impl))
        return ModelConfig(
            model=source.model, tokenizer=source.tokenizer, hf_config=hf_config,
            dtype=resolve_dtype(self.dtype, hf_config, device), max_model_len=max_model_len,
            served_model_name=self.served_model_names()[0], load_format=self.load_format, seed=self._seed(),
            chat_template=read_chat_template(self.chat_template), trust_remote_code=self.trust_remote_code,
            tokenizer_mode="slow" if self.tokenizer_mode == "slow" else "auto",
            max_logprobs=self.max_logprobs, logprobs_mode=self.logprobs_mode,
            skip_tokenizer_init=self.skip_tokenizer_init, served_model_names=tuple(self.served_model_names()),
            runner=runner, pooler_config=pooler_config,
            generation_defaults=read_generation_defaults(self.generation_config, source.model,
                                                         self.override_generation_config),
            generation_config_dir=(source.model if self.generation_config in ("auto", "vllm")
                                   else str(Path(self.generation_config).expanduser())),
            quantization=resolve_quantization_name(hf_config, self.quantization, self.model_impl, source.model),
            model_impl=self.model_impl,
            enable_prompt_embeds=self.enable_prompt_embeds,
        )

    def _async_scheduling(self, device: str, pipeline_parallel_size: int, logits_processors: tuple[str, ...],
                          pooling: bool, speculative: bool) -> bool:
        """The async_scheduling setting, or its default for the device; custom logits processors
        (which read each request's output tokens on the host before its next step is sampled)
        turn the default off and refuse the paths they cannot run on."""
        default = default_async_scheduling(device, pipeline_parallel_size)
        if not logits_processors:
            return self.async_scheduling if self.async_scheduling is not None else default
        check_custom_logits_fit(pooling, speculative, pipeline_parallel_size, self.async_scheduling)
        if self.async_scheduling is None and default:
            logging.getLogger("pagedlm").info("Async scheduling is off: custom logits processors read each request's "
                                              "output tokens, which must be on the host before the next step is "
                                              "sampled.")
        return False

    def _speculative_config(self, model_config: ModelConfig, world_size: int) -> Any:
        """--speculative-config resolved against the model, and what it cannot run with refused."""
        spec = resolve_speculative_config(self.speculative_config, model_config.pooler_config is not None,
                                          model_config.max_model_len)
        if spec is not None:
            check_speculation_fits(world_size)
            if self.enable_sleep_mode:  # the draft's weights, cache and graphs are not put to sleep
                raise ConfigError("--enable-sleep-mode does not combine with speculative decoding yet")
            verify_transformers_speculation(model_config, spec.method)
        return spec

    def _cache_config(self, device: str, pooling: bool) -> CacheConfig:
        return CacheConfig(
            block_size=self.block_size, gpu_memory_utilization=self.gpu_memory_utilization,
            # A prefix hit would skip the hidden states the pooler reads.
            enable_prefix_caching=self.enable_prefix_caching and not pooling,
            num_gpu_blocks_override=self.num_gpu_blocks_override,
            kv_cache_memory_bytes=self.kv_cache_memory_bytes,
            cache_dtype=resolve_kv_cache_dtype(self.kv_cache_dtype, device),
            calculate_kv_scales=self.calculate_kv_scales,
            enable_sleep_mode=self.enable_sleep_mode,
            memory_hint="raise --kv-cache-memory-bytes" if device == "cpu" else
            "raise --gpu-memory-utilization (or --kv-cache-memory-bytes)",
        )

    def _scheduler_config(self, device: str, model_config: ModelConfig, spec: Any,
                          async_scheduling: bool) -> SchedulerConfig:
        """The batch limits (the device's defaults where not given), the step budget and chunked
        prefill, and the speculative tokens each step makes room for."""
        max_model_len, pooling = model_config.max_model_len, model_config.pooler_config is not None
        max_num_seqs, default_batched = self._batch_defaults(device)
        max_batched, chunked_prefill = self._step_budget(default_batched, max_model_len, pooling)
        if self.long_prefill_token_threshold and not chunked_prefill:
            raise ConfigError("--long-prefill-token-threshold splits prompts over steps, which needs chunked prefill "
                              "(on by default; not with --no-enable-chunked-prefill or runner='pooling')")
        return SchedulerConfig(
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_batched, max_model_len=max_model_len,
            async_scheduling=async_scheduling,
            enable_chunked_prefill=chunked_prefill,
            num_spec_tokens=spec.num_speculative_tokens if spec else 0,
            num_lookahead_tokens=spec.num_lookahead_tokens if spec else 0,
            spec_disable_by_batch_size=spec.disable_by_batch_size if spec else None,
            scheduling_policy=self.scheduling_policy,
            long_prefill_token_threshold=self.long_prefill_token_threshold,
            stream_interval=self.stream_interval,
        )

    def create_engine_config(self) -> EngineConfig:
        self._verify()
        device = resolve_device(self.device)
        model_config = self._model_config(device)
        pooling = model_config.pooler_config is not None
        parallel_config = resolve_parallel_config(self.tensor_parallel_size, self.pipeline_parallel_size,
                                                  self.distributed_executor_backend, device,
                                                  self.enable_expert_parallel)
        verify_parallel_shapes(model_config.hf_config, parallel_config)
        verify_transformers_backend(model_config, parallel_config.world_size)
        if parallel_config.pipeline_parallel_size > 1:
            verify_pipeline(model_config, parallel_config.pipeline_parallel_size, self.async_scheduling, pooling)
        spec = self._speculative_config(model_config, parallel_config.world_size)
        if self.enable_prompt_embeds:
            verify_prompt_embeds(model_config, parallel_config.pipeline_parallel_size, spec is not None)
        logits_processors = engine_logits_processors(self.logits_processors, pooling, spec is not None)
        async_scheduling = self._async_scheduling(device, parallel_config.pipeline_parallel_size, logits_processors,
                                                  pooling, spec is not None)
        scheduler_config = self._scheduler_config(device, model_config, spec, async_scheduling)
        return EngineConfig(
            model_config=model_config,
            cache_config=self._cache_config(device, pooling),
            scheduler_config=scheduler_config,
            parallel_config=parallel_config,
            device_config=self._device_config(device, scheduler_config.max_num_seqs),
            structured_outputs_config=self._structured_outputs(),
            speculative_config=spec,
            lora_config=build_lora_config(self.enable_lora, self.max_loras, self.max_lora_rank, self.max_cpu_loras,
                                          model_config.architectures, parallel_config.pipeline_parallel_size,
                                          model_config.runner, model_config.model_impl),
            log_stats=not self.disable_log_stats,
            logits_processors=logits_processors,
        )


@_takes_vllm_kwargs
@dataclass
class ServerEngineArgs(EngineArgs):
    """The engine arguments of `pagedlm serve`: the same options, vLLM's server defaults."""

    usage_context: ClassVar[str] = "server"


@_takes_vllm_kwargs
@dataclass
class AsyncEngineArgs(EngineArgs):
    """vLLM's AsyncEngineArgs (for AsyncLLMEngine.from_engine_args): EngineArgs and its two
    request-log switches, which have no effect here (a notice, as `serve`'s flags)."""

    enable_log_requests: bool = False
    disable_log_requests: bool = False


def _one_of(a: Any, b: Any, name_a: str, name_b: str) -> Any:
    """A setting given two ways: either one, or both when they agree; two different values are refused."""
    if a and b and a != b:
        raise ConfigError(f"{name_a} {a!r} and {name_b} {b!r} disagree: give one of them")
    return a or b


def _position_offset(hf_config: Any, model_impl: str = "auto") -> int:
    """Positions a model numbers from above 0 (RoBERTa: padding_idx + 1) are not usable context."""
    from pagedlm.models.registry import resolve_model_class

    model_cls = resolve_model_class(list(getattr(hf_config, "architectures", None) or []), model_impl)
    offset = getattr(model_cls, "position_offset", None)
    return offset(hf_config) if offset is not None else 0
