"""EngineArgs: the user-facing settings (LLM kwargs and CLI flags) -> EngineConfig."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from pagedlm.config import (
    CacheConfig,
    ConfigError,
    DeviceConfig,
    EngineConfig,
    ModelConfig,
    ParallelConfig,
    SchedulerConfig,
    StructuredOutputsConfig,
    derive_max_model_len,
    load_hf_config,
    read_chat_template,
    resolve_parallel_config,
    verify_parallel_shapes,
    resolve_device,
    resolve_dtype,
)
from pagedlm.pooling_config import pooling_batched_tokens, resolve_pooling, sentence_transformers_max_len


@dataclass
class EngineArgs:
    model: str
    tokenizer: str | None = None
    served_model_name: str | None = None
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    load_format: str = "auto"
    num_gpu_blocks_override: int | None = None
    device: str = "auto"
    chat_template: str | None = None
    async_scheduling: bool | None = None  # default: on for CUDA, off on CPU
    reasoning_parser: str | None = None  # qwen3 | deepseek_r1: reasoning_content; constraints start after it
    runner: str = "auto"  # "auto" | "generate" | "pooling"
    pooler_config: dict | str | None = None  # {"pooling_type": "CLS"|"MEAN"|"LAST", "normalize": bool}
    # ---- parallelism (tensor_parallel_size above) ----
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # "uni" | "mp" | "ray"; None: vLLM's default

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser, model_positional: bool = False) -> argparse.ArgumentParser:
        if not model_positional:
            parser.add_argument("--model", type=str, default=None, help="path to a Hugging Face checkpoint")
        parser.add_argument("--tokenizer", type=str, default=None)
        parser.add_argument("--served-model-name", type=str, default=None)
        parser.add_argument("--dtype", type=str, default="auto")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--max-model-len", type=int, default=None)
        parser.add_argument("--block-size", type=int, default=16)
        parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
        parser.add_argument("--max-num-seqs", type=int, default=256)
        parser.add_argument("--max-num-batched-tokens", type=int, default=None)
        parser.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
        parser.add_argument("--enforce-eager", action="store_true")
        parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
        parser.add_argument("--load-format", type=str, default="auto", choices=["auto", "safetensors", "dummy"])
        parser.add_argument("--num-gpu-blocks-override", type=int, default=None)
        parser.add_argument("--device", type=str, default="auto", choices=["auto", "cpu", "cuda"])
        parser.add_argument("--chat-template", type=str, default=None)
        parser.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                            help="overlap scheduling with the device step (default: on for CUDA)")
        parser.add_argument("--reasoning-parser", type=str, default=None, choices=["deepseek_r1", "qwen3"],
                            help="split <think>...</think> into reasoning_content; structured output "
                                 "constraints apply after it")
        parser.add_argument("--runner", type=str, default="auto", choices=["auto", "generate", "pooling"],
                            help="generate text, or pool hidden states into embeddings (auto: from the checkpoint)")
        parser.add_argument("--pooler-config", "--override-pooler-config", dest="pooler_config", type=str,
                            default=None, help='JSON, e.g. \'{"pooling_type": "MEAN", "normalize": false}\'')
        # ---- parallelism ----
        parser.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
        parser.add_argument("--distributed-executor-backend", type=str, default=None, choices=["mp", "ray", "uni"],
                            help="how ranks run: uni (one rank, in process), mp (a process per rank), ray "
                                 "(Ray actors, ranks may span hosts); default mp, or ray when the world is "
                                 "larger than this host's GPUs")
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> "EngineArgs":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names})

    def _verify(self) -> None:
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128):
            raise ConfigError(f"block_size must be a power of two up to 128, got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.load_format not in ("auto", "safetensors", "dummy"):
            raise ConfigError(f"load_format must be 'auto', 'safetensors' or 'dummy', got {self.load_format!r}")
        if self.num_gpu_blocks_override is not None and self.num_gpu_blocks_override < 1:
            raise ConfigError("num_gpu_blocks_override must be at least 1")
        if self.reasoning_parser not in (None, "deepseek_r1", "qwen3"):
            raise ConfigError(f"reasoning_parser must be 'deepseek_r1' or 'qwen3', got {self.reasoning_parser!r}")

    def create_engine_config(self) -> EngineConfig:
        self._verify()
        hf_config = load_hf_config(self.model)
        device = resolve_device(self.device)
        runner, pooler_config = resolve_pooling(self.runner, self.model, hf_config,
                                                list(getattr(hf_config, "architectures", None) or []),
                                                self.pooler_config)
        max_model_len = derive_max_model_len(hf_config, self.max_model_len or (
            sentence_transformers_max_len(self.model) if pooler_config else None))
        model_config = ModelConfig(
            model=self.model,
            tokenizer=self.tokenizer or self.model,
            hf_config=hf_config,
            dtype=resolve_dtype(self.dtype, hf_config, device),
            max_model_len=max_model_len,
            served_model_name=self.served_model_name or self.model,
            load_format=self.load_format,
            seed=self.seed,
            chat_template=read_chat_template(self.chat_template),
            runner=runner,
            pooler_config=pooler_config,
        )
        parallel_config = resolve_parallel_config(self.tensor_parallel_size, self.pipeline_parallel_size,
                                                  self.distributed_executor_backend, device)
        verify_parallel_shapes(hf_config, parallel_config)
        if parallel_config.pipeline_parallel_size > 1:
            from pagedlm.models.registry import verify_pipeline_support

            verify_pipeline_support(model_config.architectures)
        default_tokens = 8192 if device == "cuda" else 2048
        max_batched = self.max_num_batched_tokens or default_tokens
        if max_batched < 1:
            raise ConfigError(f"max_num_batched_tokens must be at least 1, got {max_batched}")
        pooling = pooler_config is not None
        if pooling:
            max_batched = pooling_batched_tokens(self.max_num_batched_tokens, max_batched, max_model_len)
        return EngineConfig(
            model_config=model_config,
            cache_config=CacheConfig(
                block_size=self.block_size,
                gpu_memory_utilization=self.gpu_memory_utilization,
                # A prefix hit would skip the hidden states the pooler reads.
                enable_prefix_caching=self.enable_prefix_caching and not pooling,
                num_gpu_blocks_override=self.num_gpu_blocks_override,
            ),
            scheduler_config=SchedulerConfig(
                max_num_seqs=self.max_num_seqs,
                max_num_batched_tokens=max_batched,
                max_model_len=max_model_len,
                async_scheduling=self.async_scheduling if self.async_scheduling is not None else device == "cuda",
                enable_chunked_prefill=not pooling,
            ),
            parallel_config=parallel_config,
            device_config=DeviceConfig(device=device, enforce_eager=self.enforce_eager),
            structured_outputs_config=StructuredOutputsConfig(reasoning_parser=self.reasoning_parser),
        )
