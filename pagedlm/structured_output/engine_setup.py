"""Engine-core set-up of structured outputs: the backend factory (lazy: the tokenizer and its
xgrammar vocabulary are built on the first constrained request, so engines that never see one
pay nothing) and the reasoning markers as token ids."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

from pagedlm.config import ConfigError, EngineConfig
from pagedlm.structured_output.manager import ReasoningMarkers

if TYPE_CHECKING:  # xgrammar is imported on the first constrained request, not at start-up
    from pagedlm.structured_output.xgrammar_backend import XgrammarBackend


def make_backend_factory(config: EngineConfig) -> tuple[Callable[[], "XgrammarBackend"], Callable[[], Any]]:
    from pagedlm.engine.input_processor import generation_eos_ids, load_tokenizer

    model_config = config.model_config
    if config.structured_outputs_config.backend != "xgrammar":
        raise ConfigError(f"structured outputs backend {config.structured_outputs_config.backend!r} is not "
                          "supported; use 'xgrammar'")
    tokenizer_loader = functools.cache(lambda: load_tokenizer(model_config))

    def factory() -> "XgrammarBackend":
        from pagedlm.structured_output.xgrammar_backend import XgrammarBackend

        tokenizer = tokenizer_loader()
        stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        stop_ids += [t for t in generation_eos_ids(model_config)
                     if t not in stop_ids]
        return XgrammarBackend(tokenizer, model_config.vocab_size, stop_ids)

    return factory, tokenizer_loader


def reasoning_markers(config: EngineConfig, tokenizer_loader: Callable[[], Any]) -> ReasoningMarkers | None:
    name = config.structured_outputs_config.reasoning_parser
    if name is None:
        return None
    from pagedlm.entrypoints.openai.reasoning import get_reasoning_parser

    parser = get_reasoning_parser(name)
    if not parser.token_markers:
        return ReasoningMarkers(-1, -1, False, refused=(
            f"structured outputs are not supported with --reasoning-parser {name}: its reasoning markers are "
            "not single tokens, so the engine cannot tell where the reasoning ends"))
    vocab = tokenizer_loader().get_vocab()
    missing = [t for t in (parser.start_token, parser.end_token) if t not in vocab]
    if missing:
        raise ConfigError(f"reasoning parser {name!r} needs the tokens {missing} in the tokenizer's vocabulary; "
                          "this model does not have them")
    return ReasoningMarkers(vocab[parser.start_token], vocab[parser.end_token], parser.implicit_start)
