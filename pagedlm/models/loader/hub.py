"""Hugging Face Hub ids -> a local snapshot directory, through ``huggingface_hub``.

Only the files serving needs are fetched: config, tokenizer, generation config and the
weights (safetensors; PyTorch ``.bin`` only when the repo has no safetensors). The standard
HF cache is used (or ``download_dir``), ``HF_TOKEN`` is read by huggingface_hub itself, and
``HF_HUB_OFFLINE`` is read at call time so a cached snapshot is used without any network.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pagedlm.config import ConfigError

logger = logging.getLogger(__name__)

CONFIG_PATTERNS = [
    "config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "vocab.txt", "merges.txt", "*.model", "*.tiktoken", "chat_template.json", "chat_template.jinja",
    # sentence-transformers layout, read by pooling models
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json", "*_Pooling/config.json",
]
SAFETENSORS_PATTERNS = ["*.safetensors", "model.safetensors.index.json"]
BIN_PATTERNS = ["pytorch_model*.bin", "pytorch_model.bin.index.json"]

_TRUE = ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def _not_found_message(repo_id: str, revision: str | None, cache_dir: str | None, why: str) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    rev = f" (revision {revision!r})" if revision else ""
    return (
        f"model {repo_id!r}{rev} was not found locally or in the Hugging Face cache ({cache_dir or HF_HUB_CACHE}) "
        f"and {why}. Pass a local checkpoint directory or .gguf file instead (e.g. `pagedlm serve "
        f"/path/to/model`), or download it first on a machine with network access (`hf download {repo_id}`) "
        "into this cache or --download-dir."
    )


def _snapshot(repo_id: str, revision: str | None, cache_dir: str | None, patterns: list[str],
              token: str | bool | None = None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    # --hf-token: a token, or True for the one `hf auth login` stored; unset, huggingface_hub reads HF_TOKEN
    auth = {} if token is None else {"token": token}
    try:
        return Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns,
                                      local_files_only=offline, **auth))
    except HFValidationError as e:
        raise ConfigError(f"model {repo_id!r} is neither an existing local path nor a valid Hugging Face Hub "
                          f"id (org/name): {e}") from e
    except GatedRepoError as e:
        raise ConfigError(f"model {repo_id!r} is gated on the Hub: accept its licence on huggingface.co and "
                          "set HF_TOKEN to a token with access") from e
    except RevisionNotFoundError as e:
        raise ConfigError(f"revision {revision!r} of model {repo_id!r} does not exist on the Hub") from e
    except RepositoryNotFoundError as e:
        raise ConfigError(f"model {repo_id!r} does not exist on the Hugging Face Hub (or is private: set "
                          "HF_TOKEN); pass a local checkpoint directory or .gguf file instead") from e
    except LocalEntryNotFoundError as e:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise ConfigError(_not_found_message(repo_id, revision, cache_dir, why)) from e


def download_model(repo_id: str, revision: str | None, download_dir: str | None, load_format: str,
                   token: str | bool | None = None) -> Path:
    """The local snapshot directory of ``repo_id`` with what ``load_format`` needs."""
    if load_format == "dummy":
        return _snapshot(repo_id, revision, download_dir, CONFIG_PATTERNS, token)
    weights = BIN_PATTERNS if load_format == "pt" else SAFETENSORS_PATTERNS
    path = _snapshot(repo_id, revision, download_dir, CONFIG_PATTERNS + weights, token)
    if load_format == "auto" and not any(path.glob("*.safetensors")):
        logger.info("%s has no safetensors weights; fetching pytorch_model*.bin", repo_id)
        path = _snapshot(repo_id, revision, download_dir, CONFIG_PATTERNS + BIN_PATTERNS, token)
    return path


def download_tokenizer(repo_id: str, revision: str | None, download_dir: str | None,
                       token: str | bool | None = None) -> Path:
    return _snapshot(repo_id, revision, download_dir, CONFIG_PATTERNS, token)
