"""The model options at run time (test_option_walk.py shows each one reaches the config; these
show the engine built from it honours it): the dtype the weights, the KV cache and the
forward use, the tokenizer that encodes prompts, configuration code run only when trusted,
and dummy weights that read no weight files."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest
import torch

from pagedlm import LLM, SamplingParams

KWARGS = dict(device="cpu", max_model_len=128)
PROMPTS = [[(i * 37 + 101 * k) % 500 + 5 for i in range(n)] for k, n in enumerate((50, 20, 9))]
GREEDY = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


def _runner(llm: LLM):
    return llm.llm_engine.engine_core.runner


def _prompt_logprobs(llm: LLM) -> list[float]:
    """Teacher-forced: the logprob of every prompt token after its prefix."""
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    outs = llm.generate([{"prompt_token_ids": p} for p in PROMPTS], params, use_tqdm=False)
    return [o.prompt_logprobs[pos][t].logprob for o in outs for pos, t in enumerate(o.prompt_token_ids[1:], 1)]


def test_dtype_bfloat16_runs_the_model_in_bfloat16(llama_checkpoint: str) -> None:
    f32, bf16 = LLM(llama_checkpoint, **KWARGS), LLM(llama_checkpoint, dtype="bfloat16", **KWARGS)
    assert {p.dtype for p in _runner(f32).model.parameters()} == {torch.float32}
    assert {p.dtype for p in _runner(bf16).model.parameters()} == {torch.bfloat16}
    assert {c.dtype for c in _runner(bf16).kv_caches} == {torch.bfloat16}
    # The forward ran in bfloat16: its logprobs are a rounding away from float32's (measured
    # mean 0.014 on the tiny model), not equal to them.
    errors = [abs(a - b) for a, b in zip(_prompt_logprobs(f32), _prompt_logprobs(bf16), strict=True)]
    assert 0 < statistics.mean(errors) < 0.1


def test_tokenizer_from_another_directory_encodes_the_prompts(llama_checkpoint: str, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from pagedlm.demo import build_tokenizer

    build_tokenizer(tmp_path / "tok", vocab_size=300)  # fewer merges: other ids for the same text
    text = "Hello, my name is pagedlm and the sky is blue"
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))(text)["input_ids"]
    own = AutoTokenizer.from_pretrained(llama_checkpoint)(text)["input_ids"]
    assert theirs != own
    for tokenizer, expected in ((str(tmp_path / "tok"), theirs), (None, own)):
        llm = LLM(llama_checkpoint, tokenizer=tokenizer, **KWARGS)
        out = llm.generate(text, GREEDY, use_tqdm=False)[0]
        assert out.prompt_token_ids == expected
        assert out.outputs[0].text == llm.get_tokenizer().decode(out.outputs[0].token_ids, skip_special_tokens=True)
        assert len(llm.get_tokenizer()) == (300 if tokenizer else 512)


@pytest.fixture
def modules_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """transformers copies trusted configuration code under HF_MODULES_CACHE and imports it from
    there: a temporary one, and sys.path / sys.modules as they were afterwards."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("transformers_modules"):
            del sys.modules[name]


def test_trust_remote_code_runs_the_checkpoints_configuration_code(llama_checkpoint: str, tmp_path: Path,
                                                                   modules_cache) -> None:
    """A checkpoint whose config and tokenizer classes are its own code (auto_map): refused unless
    trusted; trusted, the engine runs with those classes (and the weights give the same tokens)."""
    remote = tmp_path / "remote"
    shutil.copytree(llama_checkpoint, remote)
    config = json.loads((remote / "config.json").read_text())
    config.update(model_type="tiny_remote_llama", auto_map={"AutoConfig": "configuration_tiny.TinyRemoteConfig"})
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "configuration_tiny.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass TinyRemoteConfig(LlamaConfig):\n"
        "    model_type = 'tiny_remote_llama'\n")
    tokenizer_config = json.loads((remote / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_tiny.TinyRemoteTokenizer"]}
    (remote / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    (remote / "tokenization_tiny.py").write_text(
        "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class TinyRemoteTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    from pagedlm.config import ConfigError

    with pytest.raises(ConfigError, match="trust_remote_code=True") as refused:
        LLM(str(remote), **KWARGS)
    assert "\n" not in str(refused.value)  # one line
    trusted = LLM(str(remote), trust_remote_code=True, **KWARGS)
    assert type(trusted.llm_engine.model_config.hf_config).__name__ == "TinyRemoteConfig"
    assert type(trusted.get_tokenizer()).__name__ == "TinyRemoteTokenizer"
    prompts = [{"prompt_token_ids": p} for p in PROMPTS]
    assert [o.outputs[0].token_ids for o in trusted.generate(prompts, GREEDY, use_tqdm=False)] == \
        [o.outputs[0].token_ids for o in LLM(llama_checkpoint, **KWARGS).generate(prompts, GREEDY, use_tqdm=False)]


def test_load_format_dummy_reads_no_weight_files(llama_checkpoint: str, tmp_path: Path) -> None:
    from pagedlm.config import ConfigError

    weightless = tmp_path / "weightless"
    shutil.copytree(llama_checkpoint, weightless, ignore=shutil.ignore_patterns("*.safetensors*"))
    with pytest.raises(ConfigError, match="safetensors"):
        LLM(str(weightless), **KWARGS)
    llm = LLM(str(weightless), load_format="dummy", **KWARGS)
    # Random values of the real shapes (uniform in +-0.05), and the engine runs on them.
    assert all(p.abs().max() <= 0.05 for p in _runner(llm).model.parameters() if p.dim() > 1)
    out = llm.generate({"prompt_token_ids": PROMPTS[0]}, GREEDY, use_tqdm=False)[0].outputs[0]
    assert len(out.token_ids) == 4
