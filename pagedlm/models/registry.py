"""Architecture name (config.json "architectures") -> model class."""

from __future__ import annotations

from torch import nn

from pagedlm.models.adapters import as_pooling_model
from pagedlm.models.bert import BertModel, RobertaModel
from pagedlm.models.bert_classifier import BertForSequenceClassification, RobertaForSequenceClassification
from pagedlm.models.cohere import Cohere2ForCausalLM, CohereForCausalLM
from pagedlm.models.decoder_classifier import Qwen2ForRewardModel, as_seq_cls_model
from pagedlm.models.deepseek_v2 import DeepseekV2ForCausalLM, DeepseekV3ForCausalLM
from pagedlm.models.ernie45 import Ernie4_5ForCausalLM
from pagedlm.models.ernie45_moe import Ernie4_5_MoeForCausalLM
from pagedlm.models.falcon import FalconForCausalLM
from pagedlm.models.gemma import GemmaForCausalLM
from pagedlm.models.gemma2 import Gemma2ForCausalLM
from pagedlm.models.gemma3 import Gemma3ForCausalLM, Gemma3ForConditionalGeneration
from pagedlm.models.glm import Glm4ForCausalLM, GlmForCausalLM
from pagedlm.models.glm4_moe import Glm4MoeForCausalLM
from pagedlm.models.gpt2 import GPT2LMHeadModel
from pagedlm.models.gpt_bigcode import GPTBigCodeForCausalLM
from pagedlm.models.gpt_neox import GPTNeoXForCausalLM
from pagedlm.models.gpt_oss import GptOssForCausalLM
from pagedlm.models.gptj import GPTJForCausalLM
from pagedlm.models.granitemoe import GraniteMoeForCausalLM, GraniteMoeSharedForCausalLM
from pagedlm.models.llama import LlamaForCausalLM
from pagedlm.models.llama_variants import (
    ApertusForCausalLM,
    ArceeForCausalLM,
    HeliumForCausalLM,
    HunYuanDenseV1ForCausalLM,
)
from pagedlm.models.mixtral import MixtralForCausalLM
from pagedlm.models.modernbert import ModernBertForSequenceClassification, ModernBertModel
from pagedlm.models.nemotron import NemotronForCausalLM
from pagedlm.models.olmo import OlmoForCausalLM
from pagedlm.models.olmo2 import Exaone4ForCausalLM, Olmo2ForCausalLM, Olmo3ForCausalLM
from pagedlm.models.olmoe import OlmoeForCausalLM
from pagedlm.models.phi import PhiForCausalLM
from pagedlm.models.phi3 import Phi3ForCausalLM
from pagedlm.models.phimoe import PhimoeForCausalLM
from pagedlm.models.qwen2_moe import Qwen2MoeForCausalLM
from pagedlm.models.qwen3_moe import Qwen3MoeForCausalLM
from pagedlm.models.rotary_bert import GteModel, NomicBertModel
from pagedlm.models.stablelm import StableLmForCausalLM
from pagedlm.models.starcoder2 import Starcoder2ForCausalLM

_MODELS: dict[str, type[nn.Module]] = {
    "BertModel": BertModel,
    "RobertaModel": RobertaModel,  # positions from padding_idx + 1
    "XLMRobertaModel": RobertaModel,  # e.g. bge-m3, multilingual-e5
    "ModernBertModel": ModernBertModel,  # global / sliding-window layers, RoPE per layer type, GeGLU
    "NomicBertModel": NomicBertModel,  # nomic-embed-text: RoPE, SwiGLU, no biases
    "GteModel": GteModel,  # gte-*-v1.5 / gte-multilingual: RoPE, gated MLP
    "NewModel": GteModel,  # (the published gte checkpoints' name)
    # Sequence classification (pooling only): classifiers, and cross-encoders with one label.
    "BertForSequenceClassification": BertForSequenceClassification,
    "RobertaForSequenceClassification": RobertaForSequenceClassification,
    "XLMRobertaForSequenceClassification": RobertaForSequenceClassification,
    "ModernBertForSequenceClassification": ModernBertForSequenceClassification,  # CLS or mean head
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "GraniteForCausalLM": LlamaForCausalLM,  # embedding / residual / attention multipliers, logits_scaling
    "SmolLM3ForCausalLM": LlamaForCausalLM,  # NoPE layers (no_rope_layers)
    # Decoder checkpoints saved without an LM head (embedding models): pooling only.
    "LlamaModel": as_pooling_model(LlamaForCausalLM),
    "MistralModel": as_pooling_model(LlamaForCausalLM),
    "Qwen2Model": as_pooling_model(LlamaForCausalLM),
    "Qwen3Model": as_pooling_model(LlamaForCausalLM),
    # Decoders with a score head on the last token (classifiers; cross-encoders with one label),
    # and a reward model (a reward per token).
    "LlamaForSequenceClassification": as_seq_cls_model(LlamaForCausalLM),
    "MistralForSequenceClassification": as_seq_cls_model(LlamaForCausalLM),
    "Qwen2ForSequenceClassification": as_seq_cls_model(LlamaForCausalLM),
    "Qwen3ForSequenceClassification": as_seq_cls_model(LlamaForCausalLM),
    "Gemma2ForSequenceClassification": as_seq_cls_model(Gemma2ForCausalLM),
    "Qwen2ForRewardModel": Qwen2ForRewardModel,
    "Olmo2ForCausalLM": Olmo2ForCausalLM,
    "GemmaForCausalLM": GemmaForCausalLM,
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "Gemma3ForConditionalGeneration": Gemma3ForConditionalGeneration,  # its language model (text only)
    "Phi3ForCausalLM": Phi3ForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "Qwen2MoeForCausalLM": Qwen2MoeForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
    "OlmoeForCausalLM": OlmoeForCausalLM,
    "GraniteMoeForCausalLM": GraniteMoeForCausalLM,  # Granite multipliers, 3-D expert tensors
    "GraniteMoeSharedForCausalLM": GraniteMoeSharedForCausalLM,  # plus a shared MLP
    "PhimoeForCausalLM": PhimoeForCausalLM,  # sparsemixer routing
    "Ernie4_5_MoeForCausalLM": Ernie4_5_MoeForCausalLM,
    "Glm4MoeForCausalLM": Glm4MoeForCausalLM,  # sigmoid, grouped top-k with a correction bias
    "DeepseekV2ForCausalLM": DeepseekV2ForCausalLM,  # MLA (decompressed KV cache), softmax routing
    "DeepseekV3ForCausalLM": DeepseekV3ForCausalLM,  # MLA, sigmoid grouped routing with a correction bias
    "GptOssForCausalLM": GptOssForCausalLM,  # attention sinks, clamped SwiGLU experts with biases, MXFP4
    "GPT2LMHeadModel": GPT2LMHeadModel,
    "GPTNeoXForCausalLM": GPTNeoXForCausalLM,
    "Starcoder2ForCausalLM": Starcoder2ForCausalLM,
    "CohereForCausalLM": CohereForCausalLM,
    "Cohere2ForCausalLM": Cohere2ForCausalLM,
    "GPTJForCausalLM": GPTJForCausalLM,
    "GPTBigCodeForCausalLM": GPTBigCodeForCausalLM,
    "PhiForCausalLM": PhiForCausalLM,
    "GlmForCausalLM": GlmForCausalLM,
    "Glm4ForCausalLM": Glm4ForCausalLM,
    "Ernie4_5ForCausalLM": Ernie4_5ForCausalLM,
    "FalconForCausalLM": FalconForCausalLM,
    "OlmoForCausalLM": OlmoForCausalLM,
    "Olmo3ForCausalLM": Olmo3ForCausalLM,  # sliding-window layers, RoPE per layer type
    "Exaone4ForCausalLM": Exaone4ForCausalLM,  # post-norms, per-head q/k norms, NoPE full layers
    "ApertusForCausalLM": ApertusForCausalLM,  # xIELU ungated MLP, per-head q/k norms
    "ArceeForCausalLM": ArceeForCausalLM,  # relu2 ungated MLP
    "HeliumForCausalLM": HeliumForCausalLM,  # GPT-J-style RoPE
    "NemotronForCausalLM": NemotronForCausalLM,  # LayerNorm1P, partial RoPE, relu2 ungated MLP
    "StableLmForCausalLM": StableLmForCausalLM,  # LayerNorms, partial RoPE, per-head q/k norms, parallel blocks
    "SeedOssForCausalLM": LlamaForCausalLM,  # q/k/v bias, o_proj bias from attention_out_bias
    "HunYuanDenseV1ForCausalLM": HunYuanDenseV1ForCausalLM,  # q/k norms after RoPE, NTK-alpha RoPE
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


# model_impl values: "auto" (native, else the transformers backend), "transformers" (always the
# transformers backend), "vllm" / "pagedlm" (native only).
MODEL_IMPLS = ("auto", "vllm", "pagedlm", "transformers")


def resolve_model_class(architectures: list[str] | None, model_impl: str = "auto") -> type[nn.Module]:
    """The model class for the checkpoint's architectures: pagedlm's own, or (``model_impl``
    "transformers", or "auto" for an architecture with no native class) the transformers
    backend running transformers' class (pagedlm/models/transformers.py)."""
    from pagedlm.models.transformers import TransformersForCausalLM, supports_transformers_backend

    if model_impl not in MODEL_IMPLS:
        raise ValueError(f"model_impl {model_impl!r} is not supported: use one of {list(MODEL_IMPLS)}")
    if model_impl != "transformers":
        for arch in architectures or []:
            if arch in _MODELS:
                return _MODELS[arch]
    if model_impl in ("auto", "transformers"):
        for arch in architectures or []:
            if supports_transformers_backend(arch):
                return TransformersForCausalLM
    if model_impl == "transformers":
        raise ValueError(
            f"Model architectures {architectures} cannot run with model_impl='transformers': transformers has no "
            "causal-LM class of that name that supports its attention interface (_supports_attention_backend)")
    tried = (" (nor by the transformers backend: transformers has no causal-LM class of that name that "
             "supports its attention interface)") if model_impl == "auto" else ""
    raise ValueError(
        f"Model architectures {architectures} are not supported by pagedlm{tried}. "
        f"Supported architectures: {supported_architectures()}"
    )


def uses_transformers_backend(architectures: list[str] | None, model_impl: str = "auto") -> bool:
    return getattr(resolve_model_class(architectures, model_impl), "is_transformers_backend", False)


def verify_pipeline_support(architectures: list[str] | None, model_impl: str = "auto") -> None:
    """Pipeline stages need a model whose forward takes and returns IntermediateTensors."""
    from pagedlm.config import ConfigError

    model_cls = resolve_model_class(architectures, model_impl)
    if not getattr(model_cls, "supports_pp", False):
        raise ConfigError(f"{model_cls.__name__} does not support pipeline parallelism yet; "
                          "use pipeline_parallel_size=1")
