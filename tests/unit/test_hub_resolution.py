"""Hub ids through huggingface_hub, without a network: which files are asked for, which cache,
HF_TOKEN left to huggingface_hub, and each Hub failure turned into a ConfigError that says what
to do. ``snapshot_download`` is replaced by a recorder; the real one is exercised offline against a
pre-populated cache in tests/models/test_model_sources.py."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import pytest

from pagedlm.config import ConfigError
from pagedlm.models.loader import hub

# A Hub repo's files as real ones have them (weights in several formats, extras serving never reads).
REPO_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "chat_template.jinja", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "model-q4_k_m.gguf", "original/consolidated.00.pth", "README.md", "onnx/model.onnx",
    "1_Pooling/config.json", "modules.json", "flax_model.msgpack",
]


class Recorder:
    """Stands in for snapshot_download: remembers each call, 'downloads' the matching files."""

    def __init__(self, root: Path, files: list[str] = REPO_FILES, error: Exception | None = None) -> None:
        self.root, self.files, self.error, self.calls = root, files, error, []

    def __call__(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        snapshot = self.root / repo_id.replace("/", "--")
        for name in self.files:
            if any(fnmatch.fnmatch(name, p) for p in kwargs["allow_patterns"]):
                (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
                (snapshot / name).write_text("x")
        return str(snapshot)


@pytest.fixture
def recorder(tmp_path, monkeypatch) -> Recorder:
    rec = Recorder(tmp_path)
    monkeypatch.setattr("huggingface_hub.snapshot_download", rec)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return rec


def _fetched(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


def test_only_the_files_serving_needs(recorder):
    path = hub.download_model("org/model", None, None, "auto")
    assert _fetched(path) == {
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
        "tokenizer.model", "chat_template.jinja", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
        "1_Pooling/config.json", "modules.json"}
    call = recorder.calls[0]
    # the standard HF cache (None), the default revision; no token passed: huggingface_hub reads HF_TOKEN itself
    assert call["cache_dir"] is None and call["revision"] is None and "token" not in call
    assert call["local_files_only"] is False


def test_bin_only_repo_falls_back_to_pytorch_bin(tmp_path, monkeypatch):
    rec = Recorder(tmp_path, files=[f for f in REPO_FILES if "safetensors" not in f])
    monkeypatch.setattr("huggingface_hub.snapshot_download", rec)
    path = hub.download_model("org/old", "v1", str(tmp_path / "dl"), "auto")
    assert "pytorch_model.bin" in _fetched(path) and len(rec.calls) == 2
    assert all(c["revision"] == "v1" and c["cache_dir"] == str(tmp_path / "dl") for c in rec.calls)


def test_dummy_weights_fetch_no_weights_and_offline_is_read_per_call(recorder, monkeypatch):
    path = hub.download_model("org/model", None, None, "dummy")
    assert not any(f.endswith((".safetensors", ".bin")) for f in _fetched(path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.download_tokenizer("org/model", None, None)
    assert recorder.calls[-1]["local_files_only"] is True


def _error(name: str) -> Exception:
    import huggingface_hub.errors as errors
    from requests import Response

    response = Response()
    response.status_code = 404 if name != "GatedRepoError" else 403
    if name in ("GatedRepoError", "RepositoryNotFoundError", "RevisionNotFoundError"):
        return getattr(errors, name)("hub said no", response=response)
    return getattr(errors, name)("hub said no")


@pytest.mark.parametrize("error, fragment", [
    ("GatedRepoError", "is gated on the Hub: accept its licence on huggingface.co and set HF_TOKEN"),
    ("RepositoryNotFoundError", "does not exist on the Hugging Face Hub (or is private: set HF_TOKEN)"),
    ("RevisionNotFoundError", "revision 'v9' of model 'org/model' does not exist on the Hub"),
    ("LocalEntryNotFoundError", "was not found locally or in the Hugging Face cache (/my/cache) and the Hub "
                                "could not be reached"),
])
def test_hub_failures_are_config_errors_that_say_what_to_do(tmp_path, monkeypatch, error, fragment):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.snapshot_download", Recorder(tmp_path, error=_error(error)))
    with pytest.raises(ConfigError) as info:
        hub.download_model("org/model", "v9", "/my/cache", "auto")
    assert fragment in str(info.value)


def test_hf_token_reaches_the_hub_and_stays_out_of_reprs(recorder):
    from pagedlm.engine_args import EngineArgs
    from pagedlm.entrypoints.cli import parse_serve_args
    from pagedlm.models.loader.source import resolve_model_source

    resolve_model_source("org/model", token="hf_secret", tokenizer="org/tok")
    assert [c["token"] for c in recorder.calls] == ["hf_secret", "hf_secret"]  # the model and its tokenizer
    assert parse_serve_args(["org/model", "--hf-token"]).hf_token is True  # the stored login token
    assert parse_serve_args(["org/model", "--hf-token", "hf_x"]).hf_token == "hf_x"
    assert "hf_secret" not in repr(EngineArgs(model="org/model", hf_token="hf_secret"))


def test_hf_token_with_a_local_path_says_it_has_no_effect(tmp_path, pagedlm_warnings):
    from pagedlm.models.loader.source import _local_or_hub

    assert _local_or_hub(str(tmp_path), None, None, "auto", tokenizer_only=False, token="hf_x") == tmp_path
    _local_or_hub(str(tmp_path), None, None, "auto", tokenizer_only=False)
    assert [m for m in pagedlm_warnings if "hf-token" in m] == [
        f"--hf-token has no effect: {str(tmp_path)!r} is a local path, not a Hub id"]
