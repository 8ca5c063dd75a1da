"""vLLM's ``vllm.tokenizers.get_tokenizer`` (older vLLM: ``vllm.transformers_utils.tokenizer``):
a script's tokenizer, loaded as the engine loads its own (pagedlm.engine.input_processor)."""

from __future__ import annotations

from typing import Any

from pagedlm.config import ConfigError

TOKENIZER_MODES = ("auto", "hf", "slow")


def get_tokenizer(tokenizer_name: str, *args: Any, tokenizer_mode: str = "auto", trust_remote_code: bool = False,
                  revision: str | None = None, download_dir: str | None = None, **kwargs: Any) -> Any:
    """The Hugging Face tokenizer of a checkpoint directory, a .gguf file (its metadata's) or a
    Hub id (downloaded as the engine would: only the config and tokenizer files). ``tokenizer_mode``
    as ``LLM(tokenizer_mode=...)``: auto / hf (the fast tokenizer where there is one), slow (the
    Python one); other modes are refused. ``*args`` / ``**kwargs`` go to
    ``AutoTokenizer.from_pretrained``."""
    from pagedlm.models.loader.source import _local_or_hub, _tokenizer_dir

    if tokenizer_mode == "mistral":
        raise ConfigError("tokenizer_mode 'mistral' needs the mistral_common tokenizer, which pagedlm does not use; "
                          "use auto (the checkpoint's Hugging Face tokenizer) or slow")
    if tokenizer_mode not in TOKENIZER_MODES:
        raise ConfigError(f"tokenizer_mode {tokenizer_mode!r} is not supported: use auto (or hf) or slow")
    if tokenizer_mode == "slow" and kwargs.get("use_fast"):
        raise ConfigError("tokenizer_mode 'slow' and use_fast=True contradict each other; give one of them")
    kwargs.setdefault("use_fast", tokenizer_mode != "slow")
    path = _tokenizer_dir(_local_or_hub(str(tokenizer_name), revision, download_dir, "auto", tokenizer_only=True))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, *args, trust_remote_code=trust_remote_code, **kwargs)


__all__ = ["get_tokenizer"]
