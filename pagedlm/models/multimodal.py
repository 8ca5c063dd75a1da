"""Multimodal checkpoints served as text-only models (their language model alone).

Such a checkpoint's config.json nests the language model's config under ``text_config``; the
engine (KV sizing, vocab, context length, parallel checks) reads a flat decoder config. So the
nested one is lifted out once, at config load, keeping the checkpoint's architecture name so
the registry picks the model class that maps the checkpoint's weight prefixes.
"""

from __future__ import annotations

from typing import Any

from pagedlm.config import ConfigError

# Architectures whose text part pagedlm serves; their image inputs are refused.
TEXT_ONLY_ARCHITECTURES = ("Gemma3ForConditionalGeneration",)


def text_only_config(hf_config: Any) -> Any:
    """``hf_config`` itself, or for a supported multimodal checkpoint its ``text_config``
    carrying the checkpoint's architecture, dtype, embedding tying and quantization config."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    arch = next((a for a in architectures if a in TEXT_ONLY_ARCHITECTURES), None)
    text = getattr(hf_config, "text_config", None)
    if arch is None or text is None:
        return hf_config
    text.architectures = [arch]
    if getattr(text, "dtype", None) is None:
        text.dtype = getattr(hf_config, "dtype", None)
    # The top-level flag is the one transformers' multimodal model ties its LM head by.
    if getattr(hf_config, "tie_word_embeddings", None) is not None:
        text.tie_word_embeddings = hf_config.tie_word_embeddings
    # A quantized checkpoint's quantization_config sits at the top level (the quantizers write it
    # for the whole model; the vision tower's layers are skipped with the rest of it).
    quant = getattr(hf_config, "quantization_config", None)
    if quant is not None and getattr(text, "quantization_config", None) is None:
        text.quantization_config = quant
    return text


def text_only_overrides(hf_config: Any, overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    """--hf-overrides for a lifted text config: vLLM users write the language model's keys under
    ``text_config``; here that config is the top level, so they apply there."""
    if not isinstance(overrides, dict) or "text_config" not in overrides or hasattr(hf_config, "text_config"):
        return overrides
    if not set(getattr(hf_config, "architectures", None) or []) & set(TEXT_ONLY_ARCHITECTURES):
        return overrides
    nested = overrides["text_config"]
    if not isinstance(nested, dict):
        raise ConfigError(f"hf_overrides text_config must be a JSON object, got {type(nested).__name__}")
    return {**{k: v for k, v in overrides.items() if k != "text_config"}, **nested}
