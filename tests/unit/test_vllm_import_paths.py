"""vLLM's example scripts with the import swapped: every ``vllm.<path>`` they import resolves
under ``pagedlm.<path>`` to pagedlm's own object (aliases, not copies), and the essential lines
of llm_engine_example.py, generate.py, prefix_caching.py (clean-up between two engines) and
spec_decode.py (the Vector metric) run on a tiny checkpoint."""

from __future__ import annotations

import importlib
import warnings

import pytest
import torch.distributed as dist

import pagedlm
from pagedlm.engine.async_llm import AsyncLLM
from pagedlm.engine.llm_engine import LLMEngine
from pagedlm.engine_args import AsyncEngineArgs, EngineArgs
from pagedlm.flexible_args import FlexibleArgumentParser
from pagedlm import metrics_reader
from pagedlm.sampling_params import SamplingParams, StructuredOutputsParams
from pagedlm.worker import distributed as parallel

# (module under vLLM's path, name) -> the pagedlm object it must be.
ALIASES = [
    ("pagedlm.logprobs", "Logprob", pagedlm.Logprob),
    ("pagedlm.sampling_params", "RepetitionDetectionParams",
     importlib.import_module("pagedlm.sampling_params").RepetitionDetectionParams),
    ("pagedlm.utils", "FlexibleArgumentParser", FlexibleArgumentParser),
    ("pagedlm.utils.argparse_utils", "FlexibleArgumentParser", FlexibleArgumentParser),
    ("pagedlm.engine.arg_utils", "EngineArgs", EngineArgs),
    ("pagedlm.engine.arg_utils", "AsyncEngineArgs", AsyncEngineArgs),
    ("pagedlm.engine.async_llm_engine", "AsyncLLMEngine", AsyncLLM),
    ("pagedlm.v1.engine.async_llm", "AsyncLLM", AsyncLLM),
    ("pagedlm.v1.engine.llm_engine", "LLMEngine", LLMEngine),
    ("pagedlm.v1.metrics.reader", "Counter", metrics_reader.Counter),
    ("pagedlm.v1.metrics.reader", "Gauge", metrics_reader.Gauge),
    ("pagedlm.v1.metrics.reader", "Histogram", metrics_reader.Histogram),
    ("pagedlm.v1.metrics.reader", "Vector", metrics_reader.Vector),
    ("pagedlm.v1.metrics.reader", "Metric", metrics_reader.Metric),
    ("pagedlm.distributed", "cleanup_dist_env_and_memory", parallel.cleanup_dist_env_and_memory),
    ("pagedlm.distributed", "destroy_model_parallel", parallel.destroy_model_parallel),
    ("pagedlm.distributed", "destroy_distributed_environment", parallel.destroy_distributed_environment),
    ("pagedlm.distributed", "get_tensor_model_parallel_rank", parallel.get_tensor_model_parallel_rank),
    ("pagedlm.distributed", "get_tensor_model_parallel_world_size", parallel.get_tensor_model_parallel_world_size),
    ("pagedlm.distributed", "tensor_model_parallel_all_reduce", parallel.tensor_model_parallel_all_reduce),
    ("pagedlm.distributed.parallel_state", "destroy_model_parallel", parallel.destroy_model_parallel),
    ("pagedlm.distributed.parallel_state", "destroy_distributed_environment", parallel.destroy_distributed_environment),
    ("pagedlm.distributed.parallel_state", "cleanup_dist_env_and_memory", parallel.cleanup_dist_env_and_memory),
    ("pagedlm.sampling_params", "GuidedDecodingParams", StructuredOutputsParams),
    # Paths that already existed, kept here so a move cannot break a vLLM script silently.
    ("pagedlm", "AsyncLLMEngine", AsyncLLM),
    ("pagedlm", "LLMEngine", LLMEngine),
    ("pagedlm", "EngineArgs", EngineArgs),
    ("pagedlm.engine.llm_engine", "LLMEngine", LLMEngine),
    ("pagedlm.sampling_params", "SamplingParams", SamplingParams),
    ("pagedlm.sampling_params", "StructuredOutputsParams", StructuredOutputsParams),
    ("pagedlm.sampling_params", "RequestOutputKind", pagedlm.RequestOutputKind),
    ("pagedlm.inputs", "TokensPrompt", pagedlm.TokensPrompt),
    ("pagedlm.outputs", "RequestOutput", pagedlm.RequestOutput),
    ("pagedlm.pooling_params", "PoolingParams", pagedlm.PoolingParams),
]


@pytest.mark.parametrize(("module", "name", "target"), ALIASES, ids=[f"{m}.{n}" for m, n, _ in ALIASES])
def test_vllm_import_path_is_the_pagedlm_object(module: str, name: str, target: object) -> None:
    assert getattr(importlib.import_module(module), name) is target


def test_lora_request_path() -> None:
    from pagedlm.lora.request import LoRARequest

    request = LoRARequest("sql-lora", 1, "/adapters/sql")  # positional, as multilora_inference.py
    assert (request.lora_name, request.lora_int_id, request.lora_path) == ("sql-lora", 1, "/adapters/sql")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    from pagedlm.demo import build_tiny_checkpoint

    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("vllm_examples_ckpt")))


def _parse_engine_args(checkpoint: str) -> EngineArgs:
    """llm_engine_example.py's start-up: FlexibleArgumentParser + EngineArgs.add_cli_args."""
    from pagedlm.utils import FlexibleArgumentParser as Parser

    parser = Parser(description="Demo on using the LLMEngine class directly")
    parser = EngineArgs.add_cli_args(parser)
    args = parser.parse_args(["--model", checkpoint, "--device", "cpu", "--max_model_len", "128",
                              "--num-gpu-blocks-override", "64"])
    return EngineArgs.from_cli_args(args)


def test_llm_engine_example_step_loop(checkpoint: str) -> None:
    from pagedlm import RequestOutput
    from pagedlm.v1.engine.llm_engine import LLMEngine as Engine

    engine = Engine.from_engine_args(_parse_engine_args(checkpoint))
    test_prompts = [  # the example's, but best_of (gone from vLLM's V1 SamplingParams)
        ("A robot may not injure a human being", SamplingParams(temperature=0.0, logprobs=1, prompt_logprobs=1)),
        ("To be or not to be,", SamplingParams(temperature=0.8, top_k=5, presence_penalty=0.2)),
        ("What is the meaning of life?", SamplingParams(n=2, temperature=0.8, top_p=0.95, frequency_penalty=0.1)),
    ]
    finished: dict[str, RequestOutput] = {}
    request_id = 0
    while test_prompts or engine.has_unfinished_requests():
        if test_prompts:
            prompt, sampling_params = test_prompts.pop(0)
            engine.add_request(str(request_id), prompt, sampling_params, lora_request=None)
            request_id += 1
        for request_output in engine.step():
            if request_output.finished:
                finished[request_output.request_id] = request_output
    assert sorted(finished) == ["0", "1", "2"]
    greedy = finished["0"]
    assert len(greedy.outputs[0].logprobs) == len(greedy.outputs[0].token_ids) > 0
    assert len(greedy.prompt_logprobs) == len(greedy.prompt_token_ids)
    assert [c.index for c in finished["2"].outputs] == [0, 1]
    engine.shutdown()


def test_generate_example_passes_parsed_args_to_llm(checkpoint: str) -> None:
    """generate.py: engine flags in an argument group, the script's own flags popped, the rest
    handed to LLM(**args); then llm.get_default_sampling_params() edited in place."""
    from pagedlm import LLM
    from pagedlm.utils.argparse_utils import FlexibleArgumentParser as Parser

    parser = Parser()
    engine_group = parser.add_argument_group("Engine arguments")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no argument groups nested in the caller's
        EngineArgs.add_cli_args(engine_group)
    engine_group.set_defaults(model=checkpoint)
    parser.add_argument_group("Sampling parameters").add_argument("--max-tokens", type=int)
    args = vars(parser.parse_args(["--device", "cpu", "--max-model-len", "128", "--max-tokens", "3"]))
    max_tokens = args.pop("max_tokens")
    llm = LLM(**args)
    sampling_params = llm.get_default_sampling_params()
    sampling_params.max_tokens = max_tokens
    out = llm.generate(["Hello, my name is"], sampling_params, use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 3
    with pytest.raises(NotImplementedError, match="profiler"):  # simple_profiling.py
        llm.start_profile()


def test_cleanup_between_two_engines_keeps_outputs(checkpoint: str) -> None:
    """prefix_caching.py: one engine, del + cleanup_dist_env_and_memory(), a second engine
    with prefix caching gives the same greedy texts."""
    from pagedlm import LLM
    from pagedlm.distributed import cleanup_dist_env_and_memory

    prompts = ["You are an expert school principal. Hello, my name is",
               "You are an expert school principal. The capital of France is"]
    params = SamplingParams(temperature=0.0, max_tokens=6)
    regular_llm = LLM(model=checkpoint, device="cpu", max_model_len=128, enable_prefix_caching=False)
    regular = [o.outputs[0].text for o in regular_llm.generate(prompts, params, use_tqdm=False)]
    del regular_llm
    cleanup_dist_env_and_memory()
    cached_llm = LLM(model=checkpoint, device="cpu", max_model_len=128, enable_prefix_caching=True)
    cached_llm.generate(prompts[0], params, use_tqdm=False)  # warm-up: the shared prefix is cached
    outputs = cached_llm.generate(prompts, params, use_tqdm=False)
    assert [o.outputs[0].text for o in outputs] == regular
    assert outputs[0].num_cached_tokens > 0


def test_destroy_helpers_end_a_process_group(tmp_path) -> None:
    from pagedlm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

    parallel.init_distributed_environment(0, 1, 1, f"file://{tmp_path / 'rendezvous'}", "gloo")
    try:
        assert dist.is_initialized() and parallel.get_parallel_state().tp_group is not None
        destroy_model_parallel()
        assert parallel.get_parallel_state().tp_group is None
        assert dist.is_initialized()  # the world outlives the model-parallel groups, as in vLLM
        destroy_distributed_environment()
        assert not dist.is_initialized()
    finally:
        parallel.destroy_distributed_environment()
    destroy_model_parallel()  # nothing left: both are no-ops, never errors
    destroy_distributed_environment()


def test_spec_decode_per_position_counter_reads_as_vector() -> None:
    """spec_decode.py asserts isinstance(metric, Vector) for ..._per_pos and reads .values."""
    from prometheus_client import CollectorRegistry

    from pagedlm.spec_decode.metrics import SpecDecodingPrometheus
    from pagedlm.v1.metrics.reader import Counter, Vector

    registry = CollectorRegistry()
    spec = SpecDecodingPrometheus(registry, "vllm:", "m")
    spec.record(0, {"num_drafts": 4, "num_draft_tokens": 12, "num_accepted_tokens": 6,
                    "accepted_per_pos": [4, 2, 0]})
    spec.record(0, {"num_drafts": 5, "num_draft_tokens": 15, "num_accepted_tokens": 8,
                    "accepted_per_pos": [5, 3, 0]})
    metrics = {m.name: m for m in metrics_reader.get_metrics_snapshot(registry, "vllm:")}
    per_pos = metrics["vllm:spec_decode_num_accepted_tokens_per_pos"]
    assert isinstance(per_pos, Vector) and per_pos.values == [5, 3, 0]
    assert per_pos.labels == {"model_name": "m", "engine": "0"}
    drafts = metrics["vllm:spec_decode_num_drafts"]
    assert isinstance(drafts, Counter) and drafts.value == 5


def test_async_llm_generate_takes_vllms_keywords() -> None:
    """async_llm_streaming.py: engine.generate(request_id=..., prompt=..., sampling_params=...).
    (Starting an engine-core process costs ~15 s on CPU; the call itself is bound here.)"""
    import inspect

    from pagedlm.v1.engine.async_llm import AsyncLLM as Engine

    bound = inspect.signature(Engine.generate).bind(
        object(), request_id="stream-example-1", prompt="The key to happiness is",
        sampling_params=SamplingParams(output_kind=pagedlm.RequestOutputKind.DELTA))
    assert bound.arguments["sampling_params"].output_kind is pagedlm.RequestOutputKind.DELTA
