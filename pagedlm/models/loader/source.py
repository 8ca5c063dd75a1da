"""Where a model comes from: the one place a ``model`` / ``tokenizer`` argument becomes local paths.

As vLLM resolves it: an existing local directory (HF checkpoint) or ``.gguf`` file is used as
is; anything else is a Hugging Face Hub id fetched into (or found in) the HF cache. Config,
tokenizer and weight loader all read the resolved paths, never the original argument.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pagedlm.config import ConfigError


@dataclass(frozen=True)
class ModelSource:
    model: str  # a local checkpoint directory, or a local .gguf file
    config_dir: str  # the directory holding config.json: the checkpoint, or the GGUF's sidecar
    tokenizer: str  # a local tokenizer directory


def _looks_like_path(arg: str) -> bool:
    return arg.startswith(("/", ".", "~")) or arg.lower().endswith(".gguf") or "\\" in arg


logger = logging.getLogger("pagedlm")


def _local_or_hub(arg: str, revision: str | None, download_dir: str | None, load_format: str,
                  tokenizer_only: bool, token: str | bool | None = None) -> Path:
    path = Path(arg).expanduser()
    if path.exists():
        if revision is not None:
            raise ConfigError(f"a revision ({revision!r}) applies to Hugging Face Hub ids only, but {arg!r} is a "
                              "local path; drop --revision/--tokenizer-revision")
        if download_dir is not None and not tokenizer_only:
            logger.warning("--download-dir has no effect: %r is a local path, not a Hub id", arg)
        if token not in (None, False) and not tokenizer_only:
            logger.warning("--hf-token has no effect: %r is a local path, not a Hub id", arg)
        return path
    if _looks_like_path(arg):
        raise ConfigError(f"{arg!r} does not exist: give an existing checkpoint directory, a .gguf file, or a "
                          "Hugging Face Hub id (org/name)")
    from pagedlm.models.loader import hub

    if tokenizer_only:
        return hub.download_tokenizer(arg, revision, download_dir, token)
    return hub.download_model(arg, revision, download_dir, load_format, token)


def _tokenizer_dir(path: Path) -> str:
    from pagedlm.models.loader.gguf import gguf_has_tokenizer, gguf_sidecar_dir, is_gguf_file

    if not is_gguf_file(path):
        return str(path)
    sidecar = gguf_sidecar_dir(path)
    if not gguf_has_tokenizer(sidecar):
        raise ConfigError(f"GGUF file {str(path)!r} has no tokenizer in its metadata; pass one with "
                          "--tokenizer (a tokenizer directory or Hub id)")
    return str(sidecar)


def resolve_model_source(model: str, revision: str | None = None, download_dir: str | None = None,
                         load_format: str = "auto", tokenizer: str | None = None,
                         tokenizer_revision: str | None = None, token: str | bool | None = None) -> ModelSource:
    from pagedlm.models.loader.gguf import gguf_sidecar_dir, is_gguf_file

    if tokenizer is None and tokenizer_revision is not None:
        tokenizer = model  # the model's own tokenizer, at another revision
    path = _local_or_hub(model, revision, download_dir, load_format, tokenizer_only=False, token=token)
    if path.is_file() and not is_gguf_file(path):
        raise ConfigError(f"model {model!r} is a file but not a .gguf file; give a checkpoint directory "
                          "(config.json + weights) or a .gguf file")
    if is_gguf_file(path) and load_format not in ("auto", "gguf", "dummy"):
        raise ConfigError(f"load_format {load_format!r} cannot read the GGUF file {model!r}; use 'auto' or 'gguf'")
    if load_format == "gguf" and not is_gguf_file(path):
        raise ConfigError(f"load_format 'gguf' needs a .gguf file, but {model!r} is a directory")
    config_dir = gguf_sidecar_dir(path) if is_gguf_file(path) else path
    if tokenizer is not None:
        # The model's --revision applies to the tokenizer only when both are the same repo.
        tok_revision = tokenizer_revision if tokenizer_revision is not None or tokenizer != model else revision
        tok_path = _local_or_hub(tokenizer, tok_revision, download_dir, load_format, tokenizer_only=True, token=token)
        tokenizer_dir = _tokenizer_dir(tok_path)
    else:
        tokenizer_dir = _tokenizer_dir(path)
    return ModelSource(model=str(path), config_dir=str(config_dir), tokenizer=tokenizer_dir)
