"""More of vLLM's import paths user scripts take (the pattern of test_vllm_import_paths.py):
init_logger, random_uuid, get_tokenizer, vllm.config's objects passed to LLM(...) in place of
a dict (each the dict's effect, each refusal the dict's), and logits processors that installed
packages register under the entry-point group pagedlm.logits_processors."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging

import pytest

from pagedlm import LLM, SamplingParams
from pagedlm.config import ConfigError
from pagedlm.config_options import CompilationConfig as CompilationConfigImpl
from pagedlm.engine.logits_processor_loading import LOGITSPROCS_GROUP
from pagedlm.engine_args import EngineArgs
from pagedlm.tokenizers import get_tokenizer

ALIASES = [
    ("pagedlm.transformers_utils.tokenizer", "get_tokenizer", get_tokenizer),
    ("pagedlm.tokenizers", "get_tokenizer", get_tokenizer),
    ("pagedlm.config", "CompilationConfig", CompilationConfigImpl),
]


@pytest.mark.parametrize(("module", "name", "target"), ALIASES, ids=[f"{m}.{n}" for m, n, _ in ALIASES])
def test_vllm_import_path_is_the_pagedlm_object(module: str, name: str, target: object) -> None:
    assert getattr(importlib.import_module(module), name) is target


def test_init_logger_logs_under_the_name_and_once(pagedlm_warnings: list[str]) -> None:
    from pagedlm.logger import init_logger

    logger = init_logger("pagedlm.my_plugin")
    assert isinstance(logger, logging.Logger) and logger.name == "pagedlm.my_plugin"
    for _ in range(3):
        logger.warning_once("plugin %s ready", "x")
    logger.warning("every time")
    logger.warning("every time")
    assert pagedlm_warnings == ["plugin x ready", "every time", "every time"]
    logger.info_once("quiet", scope="global")  # no process group: rank 0 of a world of one
    with pytest.raises(ValueError, match="scope"):
        logger.debug_once("x", scope="node")


def test_random_uuid() -> None:
    from pagedlm.utils import random_uuid

    ids = {random_uuid() for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_get_tokenizer_loads_as_the_engine(llama_checkpoint: str) -> None:
    from pagedlm.transformers_utils.tokenizer import get_tokenizer as old_path

    fast = get_tokenizer(llama_checkpoint)
    assert fast.is_fast and fast.encode("hello world") == old_path(llama_checkpoint, tokenizer_mode="hf").encode(
        "hello world")
    with pytest.raises(ConfigError, match="mistral_common"):
        get_tokenizer(llama_checkpoint, tokenizer_mode="mistral")
    with pytest.raises(ConfigError, match="does not exist"):
        get_tokenizer("./no/such/dir")


def _engine_config(checkpoint: str, **kwargs):
    return EngineArgs(model=checkpoint, device="cpu", max_model_len=64, **kwargs).create_engine_config()


def test_config_objects_are_their_dict_form(llama_checkpoint: str) -> None:
    from pagedlm.config import CompilationConfig, CompilationMode, CUDAGraphMode, PoolerConfig, StructuredOutputsConfig

    pairs = [
        ("compilation_config", CompilationConfig(cudagraph_capture_sizes=[1, 2, 4]),
         {"cudagraph_capture_sizes": [1, 2, 4]}),
        ("compilation_config", CompilationConfig(cudagraph_mode=CUDAGraphMode.NONE), {"cudagraph_mode": "NONE"}),
        ("compilation_config", CompilationConfig(mode=CompilationMode.NONE), {"mode": 0}),
        ("compilation_config", CompilationMode.NONE, 0),
        ("structured_outputs_config", StructuredOutputsConfig(reasoning_parser="qwen3"), {"reasoning_parser": "qwen3"}),
    ]
    for name, obj, plain in pairs:
        by_object = _engine_config(llama_checkpoint, **{name: obj})
        assert by_object == _engine_config(llama_checkpoint, **{name: plain}), name
    assert _engine_config(llama_checkpoint, compilation_config=CompilationConfig(
        cudagraph_mode="NONE")).device_config.cuda_graph_sizes == ()
    pooled = _engine_config(llama_checkpoint, runner="pooling", pooler_config=PoolerConfig(pooling_type="MEAN",
                                                                                            normalize=False))
    assert pooled == _engine_config(llama_checkpoint, runner="pooling",
                                    pooler_config={"pooling_type": "MEAN", "normalize": False})
    assert (pooled.model_config.pooler_config.pooling_type, pooled.model_config.pooler_config.normalize) == ("MEAN",
                                                                                                              False)


def test_config_objects_refuse_as_the_dict_form(llama_checkpoint: str) -> None:
    from pagedlm.config import CompilationConfig, KVTransferConfig, PoolerConfig

    for obj, plain in [(PoolerConfig(pooling_type="MEAN", dimensions=8), {"pooling_type": "MEAN", "dimensions": 8})]:
        messages = []
        for value in (obj, plain):
            with pytest.raises(ConfigError) as info:
                _engine_config(llama_checkpoint, runner="pooling", pooler_config=value)
            messages.append(str(info.value))
        assert messages[0] == messages[1] and "dimensions" in messages[0]
    with pytest.raises(ConfigError, match="unknown cudagraph_mode"):
        _engine_config(llama_checkpoint, compilation_config=CompilationConfig(cudagraph_mode="SOMETIMES"))
    with pytest.raises(TypeError, match="no_such_field"):  # not a vLLM field: refused at construction, as vLLM's
        CompilationConfig(no_such_field=1)
    with pytest.raises(NotImplementedError, match="disaggregated prefill"):
        KVTransferConfig(kv_connector="NixlConnector", kv_role="kv_both")
    cc = CompilationConfig()
    cc.cudagraph_capture_sizes = [8]  # set after construction, as scripts do
    assert cc.to_dict() == {"cudagraph_capture_sizes": [8]} and cc.custom_ops == [] and cc.use_cudagraph is True


def test_llm_takes_config_objects(llama_checkpoint: str) -> None:
    """LLM(compilation_config=CompilationConfig(...)) and LLM(pooler_config=PoolerConfig(...))
    start, and the pooler's settings reach the embeddings as the dict's do."""
    from pagedlm.config import CompilationConfig, PoolerConfig

    llm = LLM(llama_checkpoint, device="cpu", max_model_len=64, max_num_seqs=4,
              compilation_config=CompilationConfig(cudagraph_capture_sizes=[1, 2]))
    assert llm.llm_engine.config.device_config.cuda_graph_sizes == (1, 2)
    assert len(llm.generate("hello", SamplingParams(max_tokens=2), use_tqdm=False)[0].outputs[0].token_ids) == 2
    del llm
    embeddings = []
    for pooler_config in (PoolerConfig(pooling_type="MEAN", normalize=False), {"pooling_type": "MEAN",
                                                                                "normalize": False}):
        llm = LLM(llama_checkpoint, device="cpu", max_model_len=64, runner="pooling", pooler_config=pooler_config)
        embeddings.append(llm.embed(["hello world"], use_tqdm=False)[0].outputs.embedding)
        del llm
    assert embeddings[0] == embeddings[1]
    assert abs(sum(x * x for x in embeddings[0]) - 1.0) > 1e-3  # normalize=False honoured


class _EntryPoints:
    """importlib.metadata.entry_points as if a package registered ``value`` in our group."""

    def __init__(self, *values: str) -> None:
        self.entry_points = [importlib.metadata.EntryPoint(name=f"plugin{i}", value=v, group=LOGITSPROCS_GROUP)
                             for i, v in enumerate(values)]

    def __call__(self, *, group: str):
        return [ep for ep in self.entry_points if ep.group == group]


def test_plugin_logits_processors_load_at_start_up(llama_checkpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", _EntryPoints("custom_logits_procs:DummyLogitsProcessor"))
    name = "custom_logits_procs:DummyLogitsProcessor"
    assert _engine_config(llama_checkpoint).logits_processors == (name,)
    # the plugins first, then the ones given; one named twice runs once
    assert _engine_config(llama_checkpoint, logits_processors=["custom_logits_procs:CountingAdapter", name]
                          ).logits_processors == (name, "custom_logits_procs:CountingAdapter")
    # skipped where vLLM skips them (given ones are refused there)
    assert _engine_config(llama_checkpoint, runner="pooling").logits_processors == ()
    assert _engine_config(llama_checkpoint, speculative_config={"method": "ngram", "num_speculative_tokens": 2}
                          ).logits_processors == ()
    llm = LLM(llama_checkpoint, device="cpu", max_model_len=64, max_num_seqs=2)
    out = llm.generate("the cat", SamplingParams(max_tokens=4, extra_args={"target_token": 7}), use_tqdm=False)
    assert list(out[0].outputs[0].token_ids) == [7, 7, 7, 7]


def test_broken_plugin_is_refused_by_name(llama_checkpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", _EntryPoints("no_such_plugin_pkg:Proc"))
    with pytest.raises(ConfigError, match="plugin0.*no_such_plugin_pkg"):
        _engine_config(llama_checkpoint)
    monkeypatch.setattr(importlib.metadata, "entry_points", _EntryPoints("custom_logits_procs:NotAProcessor"))
    with pytest.raises(ConfigError, match="not a subclass"):
        _engine_config(llama_checkpoint)
