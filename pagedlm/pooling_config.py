"""Runner mode and pooler settings of a checkpoint (torch-free).

Sources, lowest priority first: the model's default pooling type, the sentence-transformers
files of the checkpoint (``modules.json``, its Pooling module's ``config.json``, a
``Normalize`` module, ``sentence_bert_config.json``), then the user's ``pooler_config``
(``--pooler-config '{"pooling_type": "MEAN", "normalize": false}'``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pagedlm.config import ConfigError

RUNNERS = ("auto", "generate", "pooling")
POOLING_TYPES = ("CLS", "MEAN", "LAST")
_ST_MODULES = "sentence_transformers.models."
# sentence-transformers Pooling flags we implement -> our pooling type
_ST_MODES = {"pooling_mode_cls_token": "CLS", "pooling_mode_mean_tokens": "MEAN", "pooling_mode_lasttoken": "LAST"}
_ST_UNSUPPORTED_MODES = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens",
                         "pooling_mode_weightedmean_tokens")


EMBED_TASKS = ("embed", "token_embed")
# Activations of a classifier's logits: "classify" is vLLM's PoolerClassify (sigmoid for one
# label, else softmax over the labels); "sigmoid" each label alone; "identity" the raw logits.
ACTIVATIONS = ("classify", "sigmoid", "identity")
# A cross-encoder's sentence-transformers activation (torch.nn.modules only, as vLLM) -> ours.
_ST_CE_ACTIVATIONS = {"torch.nn.modules.activation.Sigmoid": "classify",
                      "torch.nn.modules.activation.Softmax": "classify",
                      "torch.nn.modules.linear.Identity": "identity"}


@dataclass(frozen=True)
class PoolerConfig:
    pooling_type: str  # "CLS" | "MEAN" | "LAST"; "ALL" (every token) for reward models
    normalize: bool
    hidden_size: int
    # Matryoshka models accept `dimensions`: None = not supported; () = any size up to hidden_size.
    matryoshka_dimensions: tuple[int, ...] | None = None
    # The pooling tasks the model serves: embedding models embed; sequence-classification
    # models classify, and score pairs (as cross-encoders) when they have one label.
    tasks: tuple[str, ...] = EMBED_TASKS
    num_labels: int = 0  # a classifier's; 0 for embedding models
    classify_activation: str = "classify"  # of LLM.classify / POST /classify (one of ACTIVATIONS)
    score_activation: str = "classify"  # of cross-encoder LLM.score / POST /score, /rerank
    id2label: tuple[str, ...] = ()  # a classifier's label names, by class index

    @property
    def is_classifier(self) -> bool:
        return "classify" in self.tasks

    @property
    def has_head(self) -> bool:
        """The model's head makes the outputs (classifiers, cross-encoders, reward models)."""
        return self.is_classifier or self.is_reward_model

    @property
    def is_reward_model(self) -> bool:
        return "token_classify" in self.tasks

    def check_dimensions(self, dimensions: int | None) -> None:
        """Raises ValueError (a 400 on the server) when the model cannot give that size."""
        if dimensions is None:
            return
        if self.matryoshka_dimensions is None:
            raise ValueError("dimensions: this model does not support Matryoshka representation; changing the "
                             "output dimensions would give meaningless embeddings. Leave dimensions unset.")
        if not 1 <= dimensions <= self.hidden_size:
            raise ValueError(f"dimensions must be between 1 and the model's hidden size {self.hidden_size}, "
                             f"got {dimensions}")
        if self.matryoshka_dimensions and dimensions not in self.matryoshka_dimensions:
            raise ValueError(f"dimensions: this model supports only {list(self.matryoshka_dimensions)}, "
                             f"got {dimensions}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e


def sentence_transformers_modules(model_dir: str) -> list[dict[str, Any]] | None:
    path = Path(model_dir) / "modules.json"
    return read_json(path) if path.exists() else None


def resolve_runner(runner: str, model_dir: str, can_generate: bool, can_pool: bool) -> str:
    """auto: pooling for encoder-only checkpoints and sentence-transformers models, else generate."""
    if runner not in RUNNERS:
        raise ConfigError(f"runner must be one of {RUNNERS}, got {runner!r}")
    if runner == "auto":
        runner = "pooling" if not can_generate or sentence_transformers_modules(model_dir) else "generate"
    if runner == "generate" and not can_generate:
        raise ConfigError("this checkpoint is an encoder (pooling) model and cannot generate text; "
                          "use --runner pooling (or runner='pooling')")
    if runner == "pooling" and not can_pool:
        raise ConfigError("this architecture has no pooling support; use --runner generate")
    return runner


def _st_pooling(model_dir: str, modules: list[dict[str, Any]]) -> tuple[str | None, bool]:
    """(pooling type or None, normalize) from a sentence-transformers pipeline."""
    pooling_type, normalize = None, False
    for module in modules:
        kind = str(module.get("type", "")).removeprefix(_ST_MODULES)
        if kind == "Transformer":
            continue
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            pooling_type = _st_pooling_type(read_json(Path(model_dir) / module.get("path", "") / "config.json"))
        else:
            raise ConfigError(f"sentence-transformers module {module.get('type')!r} is not supported "
                              "(supported: Transformer, Pooling, Normalize)")
    return pooling_type, normalize


def _st_pooling_type(cfg: dict[str, Any]) -> str:
    unsupported = [m for m in _ST_UNSUPPORTED_MODES if cfg.get(m)]
    if cfg.get("include_prompt") is False:
        unsupported.append("include_prompt=false")
    chosen = [kind for flag, kind in _ST_MODES.items() if cfg.get(flag)]
    if unsupported or len(chosen) != 1:
        raise ConfigError(f"sentence-transformers pooling {unsupported or chosen} is not supported: "
                          "exactly one of CLS, mean or last-token pooling is")
    return chosen[0]


def _override(base: dict[str, Any], override: dict[str, Any] | str | None,
              pooling_types: tuple[str, ...] = POOLING_TYPES) -> dict[str, Any]:
    if override is None:
        return base
    if isinstance(override, str):
        try:
            override = json.loads(override)
        except ValueError as e:
            raise ConfigError(f"pooler_config is not valid JSON: {e}") from e
    if not isinstance(override, dict):
        raise ConfigError(f"pooler_config must be a JSON object, got {type(override).__name__}")
    unknown = sorted(set(override) - {"pooling_type", "normalize"})
    if unknown:
        raise ConfigError(f"pooler_config: unknown keys {unknown} (supported: pooling_type, normalize)")
    merged = {**base, **override}
    merged["pooling_type"] = str(merged["pooling_type"]).upper()
    if merged["pooling_type"] not in POOLING_TYPES + pooling_types:
        raise ConfigError(f"pooler_config.pooling_type must be one of {POOLING_TYPES}, got "
                          f"{override.get('pooling_type')!r}")
    if not isinstance(merged["normalize"], bool):
        raise ConfigError(f"pooler_config.normalize must be true or false, got {merged['normalize']!r}")
    return merged


def build_pooler_config(model_dir: str, hf_config: Any, default_pooling_type: str,
                        override: dict[str, Any] | str | None = None) -> PoolerConfig:
    settings: dict[str, Any] = {"pooling_type": default_pooling_type, "normalize": True}
    modules = sentence_transformers_modules(model_dir)
    if modules is not None:
        st_type, st_normalize = _st_pooling(model_dir, modules)
        settings = {"pooling_type": st_type or default_pooling_type, "normalize": st_normalize}
    settings = _override(settings, override)
    matryoshka = getattr(hf_config, "matryoshka_dimensions", None)
    dims = tuple(int(d) for d in matryoshka) if matryoshka else (() if getattr(hf_config, "is_matryoshka", False)
                                                                 else None)
    return PoolerConfig(settings["pooling_type"], settings["normalize"], int(hf_config.hidden_size), dims)


def sentence_transformers_max_len(model_dir: str) -> int | None:
    """sentence-transformers truncates inputs at max_seq_length; the engine's limit follows it."""
    path = Path(model_dir) / "sentence_bert_config.json"
    if not path.exists():
        return None
    value = read_json(path).get("max_seq_length")
    return int(value) if value else None


def classify_activation(hf_config: Any) -> str:
    """vLLM's rule, after transformers' loss for the checkpoint's problem_type."""
    problem_type = getattr(hf_config, "problem_type", None)
    return {"regression": "identity", "multi_label_classification": "sigmoid"}.get(problem_type, "classify")


def score_activation(hf_config: Any) -> str:
    """A cross-encoder's activation: the sentence-transformers CrossEncoder's (config.json
    "sentence_transformers": {"activation_fn"}, or the older
    "sbert_ce_default_activation_function"), else vLLM's default (sigmoid for one label)."""
    st = getattr(hf_config, "sentence_transformers", None)
    name = st.get("activation_fn") if isinstance(st, dict) else None
    name = name or getattr(hf_config, "sbert_ce_default_activation_function", None)
    if name is None:
        return "classify"
    if name not in _ST_CE_ACTIVATIONS:
        raise ConfigError(f"cross-encoder activation {name!r} is not supported (supported: "
                          f"{sorted(_ST_CE_ACTIVATIONS)})")
    return _ST_CE_ACTIVATIONS[name]


def build_classifier_config(hf_config: Any, override: dict[str, Any] | str | None,
                            pooling_type: str = "CLS") -> PoolerConfig:
    """A *ForSequenceClassification model: its head reads one token, the first (CLS / <s>) of
    an encoder or the last of a decoder, so the pooling is fixed; normalize applies to
    embeddings only."""
    reads = {"CLS": "the first token", "LAST": "the last token", "MEAN": "the mean of the tokens"}[pooling_type]
    _check_fixed_pooling(override, pooling_type, f"a sequence-classification model's head reads {reads}")
    num_labels = int(getattr(hf_config, "num_labels", 0) or 0)
    if num_labels < 1:
        raise ConfigError(f"a sequence-classification model needs num_labels >= 1, got {num_labels}")
    id2label = getattr(hf_config, "id2label", None) or {}
    labels = tuple(str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(num_labels))
    # vLLM serves the score task only with one label (a relevance logit).
    tasks = ("classify",) + (("score",) if num_labels == 1 else ())
    return PoolerConfig(pooling_type, False, int(hf_config.hidden_size), None, tasks, num_labels,
                        classify_activation(hf_config), score_activation(hf_config), labels)


def build_reward_config(hf_config: Any, override: dict[str, Any] | str | None) -> PoolerConfig:
    """A reward model (vLLM's Qwen2ForRewardModel): its head gives one reward per token (vLLM's
    ALL pooling, the token_classify task of LLM.reward), through the classify activation
    (sigmoid of the one label) unless the request sets use_activation=False."""
    _check_fixed_pooling(override, "ALL", "a reward model's head reads every token")
    return PoolerConfig("ALL", False, int(hf_config.hidden_size), None, ("token_classify",), 1,
                        classify_activation(hf_config), "classify", ("LABEL_0",))


def _check_fixed_pooling(override: dict[str, Any] | str | None, pooling_type: str, why: str) -> None:
    settings = _override({"pooling_type": pooling_type, "normalize": False}, override, (pooling_type,))
    if settings["pooling_type"] != pooling_type or settings["normalize"]:
        raise ConfigError(f"pooler_config: {why} (pooling_type {pooling_type}) and its outputs are not "
                          "normalised; leave pooling_type and normalize unset")


def resolve_pooling(runner: str, model_dir: str, hf_config: Any, architectures: list[str],
                    override: dict[str, Any] | str | None, model_impl: str = "auto"
                    ) -> tuple[str, PoolerConfig | None]:
    """-> (runner, pooler config when pooling). Capabilities come from the model class:
    ``supports_generation = False`` marks pooling-only models (encoders, headless decoders);
    every model returns hidden states, so every model can pool (``default_pooling_type`` says
    how: CLS for BERT, else the last token)."""
    from pagedlm.models.registry import resolve_model_class

    try:
        model_cls = resolve_model_class(architectures, model_impl)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    can_generate = getattr(model_cls, "supports_generation", True)
    # The transformers backend generates only (its pooling would need the model's own heads).
    can_pool = not getattr(model_cls, "is_transformers_backend", False)
    runner = resolve_runner(runner, model_dir, can_generate, can_pool=can_pool)
    if runner != "pooling":
        if override is not None:
            raise ConfigError("pooler_config applies only with runner='pooling'")
        return runner, None
    if getattr(model_cls, "is_reward_model", False):
        return runner, build_reward_config(hf_config, override)
    if getattr(model_cls, "is_sequence_classifier", False):
        # (a CrossEncoder's sentence-transformers files describe no pooling: not read)
        # (ModernBERT's head reads the CLS token or the mean, as its config's classifier_pooling says)
        pick = getattr(model_cls, "classifier_pooling_type", None)
        pooling_type = pick(hf_config) if pick is not None else model_cls.default_pooling_type
        return runner, build_classifier_config(hf_config, override, pooling_type)
    default_type = getattr(model_cls, "default_pooling_type", "LAST")
    return runner, build_pooler_config(model_dir, hf_config, default_type, override)


def whole_prompt_batched_tokens(requested: int | None, default: int, max_model_len: int, why: str) -> int:
    """Without chunked prefill (pooling models, or --no-enable-chunked-prefill) a prompt runs
    whole in one step, so a step must hold the longest prompt; ``why`` names the setting."""
    if requested is not None and requested < max_model_len:
        raise ConfigError(f"{why}, max_num_batched_tokens ({requested}) must be at least max_model_len "
                          f"({max_model_len}): prompts are scheduled whole, never in chunks")
    return max(default, max_model_len)


def requested_runner(convert: str, task: str, runner: str) -> str:
    """--runner, or what vLLM's --convert embed / --task (embed, generate) ask for."""
    if convert not in ("auto", "none", "embed", "classify"):
        raise ConfigError(f"convert {convert!r} is not supported: use embed (a pooling model), classify "
                          "(a sequence-classification checkpoint), auto or none")
    if task not in ("auto", "generate", "embed", "embedding", "classify", "score"):
        raise ConfigError(f"task {task!r} is not supported: use generate, embed, classify, score, or "
                          "runner='pooling' / 'generate' (vLLM's newer names)")
    asked = [(name, value, "generate" if value == "generate" else "pooling")
             for name, value in (("convert", convert), ("task", task)) if value not in ("auto", "none")]
    if runner != "auto":
        asked.append(("runner", runner, runner))
    if len({choice for _, _, choice in asked}) > 1:
        raise ConfigError("conflicting runner choices: " + ", ".join(f"{k}={v!r}" for k, v, _ in asked)
                          + " (convert or task embed means runner 'pooling')")
    return asked[0][2] if asked else "auto"


def check_pooling_kind(convert: str, task: str, pooler_config: Any) -> None:
    """convert / task classify or score need a sequence-classification checkpoint (pagedlm
    does not put a new head on a generative one, vLLM's as_seq_cls_model); embed needs an
    embedding model."""
    asked = {v for v in (convert, task) if v not in ("auto", "none", "generate")}
    is_classifier = pooler_config is not None and pooler_config.is_classifier
    if asked & {"classify", "score"} and not is_classifier:
        raise ConfigError(f"task/convert {sorted(asked)}: classify and score need a *ForSequenceClassification "
                          "checkpoint (supported: BERT, RoBERTa, XLM-RoBERTa, Llama, Mistral, Qwen2, Qwen3, Gemma 2); "
                          "converting another model is not supported")
    if asked & {"embed", "embedding"} and is_classifier:
        raise ConfigError("task/convert embed: this checkpoint is a sequence-classification model; it serves "
                          "classify and score (leave task and convert unset)")
