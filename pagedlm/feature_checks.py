"""Start-up checks of feature combinations: where two settings (or a setting and the model)
cannot run together, the engine refuses at start-up with a ConfigError naming both, rather than
failing or silently skipping one of them at run time. EngineArgs.create_engine_config calls them."""

from __future__ import annotations

from pagedlm.config import ConfigError, ModelConfig


def verify_pipeline(model_config: ModelConfig, pipeline_parallel_size: int, async_scheduling: bool | None,
                     pooling: bool) -> None:
    from pagedlm.engine.batch_queue import verify_pipeline_options
    from pagedlm.models.registry import verify_pipeline_support

    verify_pipeline_support(model_config.architectures, model_config.model_impl)
    verify_pipeline_options(pipeline_parallel_size, async_scheduling, pooling)


def verify_prompt_embeds(model_config: ModelConfig, pipeline_parallel_size: int, speculative: bool) -> None:
    """--enable-prompt-embeds: where prompts given as embeddings cannot run, refuse at start-up."""
    from pagedlm.engine.prompt_embeds import model_accepts_embeds
    from pagedlm.models.registry import resolve_model_class

    if model_config.pooler_config is not None:
        raise ConfigError("--enable-prompt-embeds is not supported with runner='pooling' (pagedlm takes prompt "
                          "embeddings for generation only)")
    if pipeline_parallel_size > 1:
        raise ConfigError("--enable-prompt-embeds is not supported with pipeline parallelism "
                          "(pipeline_parallel_size > 1)")
    if speculative:
        raise ConfigError("--enable-prompt-embeds is not supported with speculative decoding (a draft model or "
                          "n-gram proposer has no prompt tokens to read)")
    model_cls = resolve_model_class(model_config.architectures, model_config.model_impl)
    if not model_accepts_embeds(model_cls):
        raise ConfigError(f"--enable-prompt-embeds: {model_cls.__name__} ({model_config.architectures}) cannot take "
                          "prompts given as embeddings; supported: Llama-family decoders and the MoE decoders "
                          "built on pagedlm.models.mixtral.MoEForCausalLM")


def verify_transformers_backend(model_config: ModelConfig, world_size: int) -> None:
    """The transformers backend (pagedlm/models/transformers.py) runs on one rank, and its model
    must not be a hybrid one (layers other than softmax attention)."""
    from pagedlm.models.registry import uses_transformers_backend

    if not uses_transformers_backend(model_config.architectures, model_config.model_impl):
        return
    if world_size > 1:
        raise ConfigError(f"the transformers backend (model_impl={model_config.model_impl!r}, architectures "
                          f"{model_config.architectures}) runs on one rank: use tensor_parallel_size=1 and "
                          "pipeline_parallel_size=1")
    from pagedlm.models.transformers import check_layer_types

    check_layer_types(model_config.hf_config, (model_config.architectures or ["?"])[0])


def verify_transformers_speculation(model_config: ModelConfig, method: str) -> None:
    """EAGLE heads read the target's embedding and layer inputs, which a model on the
    transformers backend does not expose as pagedlm's models do."""
    from pagedlm.models.registry import uses_transformers_backend

    if method in ("eagle", "eagle3") and uses_transformers_backend(model_config.architectures, model_config.model_impl):
        raise ConfigError(f"speculative decoding with {method} needs pagedlm's own implementation of the target "
                          f"model, not the transformers backend (model_impl={model_config.model_impl!r}); use "
                          "ngram or a draft model")


def check_custom_logits_fit(pooling: bool, speculative: bool, pipeline_parallel_size: int,
                            async_scheduling: bool | None) -> None:
    """The paths custom logits processors cannot run on correctly: refused, never skipped."""
    if pooling:
        raise ConfigError("Pooling models do not support custom logits processors: remove logits_processors "
                          "(or run the model with --runner generate)")
    if speculative:
        raise ConfigError("custom logits processors are not supported with speculative decoding (draft tokens "
                          "are verified by the rejection sampler, which does not run them); remove "
                          "speculative_config or logits_processors")
    if pipeline_parallel_size > 1:
        raise ConfigError("custom logits processors are not supported with pipeline parallelism yet; use "
                          "--tensor-parallel-size instead of --pipeline-parallel-size")
    if async_scheduling:
        raise ConfigError("custom logits processors need each request's output tokens on the host before its "
                          "next step is sampled, which async scheduling defers; remove --async-scheduling")
