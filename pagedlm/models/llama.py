"""The Llama family: Llama, Mistral, Qwen2 (QKV bias), Qwen3 (per-head q/k RMSNorm), Granite
(embedding / residual / attention multipliers and scaled-down logits) and SmolLM3 (no RoPE
on every ``no_rope_layer_interval``-th layer), each difference a config field read here.

Module names follow the Hugging Face checkpoints so weights load by name; the fused
qkv_proj and gate_up_proj load their parts through ``stacked_params_mapping``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from pagedlm.config import attention_shape, layer_sliding_window
from pagedlm.layers.activation import GeluAndMul, SiluAndMul, gelu_approximation, plain_activation
from pagedlm.layers.attention import Attention
from pagedlm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from pagedlm.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
)
from pagedlm.layers.norm import RMSNorm
from pagedlm.layers.quantization import QuantizationConfig
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.pipeline import IntermediateTensors, PPMissingLayer, is_pp_missing, make_layers, missing_prefixes
from pagedlm.worker.distributed import is_first_pp_rank, is_last_pp_rank


def rope_settings(hf_config: Any) -> tuple[float, str, dict[str, Any], int]:
    """(base, rope_type, params, original_max_position) from old (rope_theta + rope_scaling)
    and new (rope_parameters) config styles."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    for key, value in scaling.items():
        params.setdefault(key, value)
    base = params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    original_max = params.get("original_max_position_embeddings", hf_config.max_position_embeddings)
    return float(base), rope_type, params, int(original_max)


def rope_parameters_by_layer_type(hf_config: Any) -> dict[str, dict[str, Any]] | None:
    """``rope_parameters`` keyed by layer type ("sliding_attention" / "full_attention", each a
    dict), as OLMo 3 and Gemma 3 configs hold them; None for one RoPE for every layer."""
    params = getattr(hf_config, "rope_parameters", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if not isinstance(params, dict) or not layer_types or not all(t in params for t in set(layer_types)):
        return None
    if not all(isinstance(params[t], dict) for t in set(layer_types)):
        return None
    return {t: params[t] for t in set(layer_types)}


def layer_uses_rope(hf_config: Any, layer: int) -> bool:
    """False for SmolLM3's NoPE layers: ``no_rope_layers[i]`` is 1 where layer i applies RoPE
    and 0 where its queries and keys go unrotated (every ``no_rope_layer_interval``-th)."""
    flags = getattr(hf_config, "no_rope_layers", None)
    return not flags or bool(flags[layer])


def attention_scale(hf_config: Any, head_dim: int) -> float:
    """Granite's ``attention_multiplier`` replaces 1/sqrt(head_dim) as the softmax scale."""
    multiplier = getattr(hf_config, "attention_multiplier", None)
    return head_dim**-0.5 if multiplier is None else float(multiplier)


class LlamaAttention(nn.Module):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None, qkv_bias: bool | None = None,
                 qk_norm: bool | None = None, quant_config: QuantizationConfig | None = None,
                 prefix: str = "", layer: int | None = None, o_bias: bool | None = None,
                 qk_norm_after_rope: bool = False, sinks: bool = False) -> None:
        """``qkv_bias`` / ``qk_norm`` override what the config implies (model files of other
        families, e.g. the MoE ones, set them). ``layer``: the layer's index, for its sliding
        window (``layer_sliding_window``); None: the model's window. ``rotary_emb`` None: a
        NoPE layer (q and k reach the cache unrotated). ``o_bias``: o_proj's bias (default:
        ``attention_out_bias`` where the config has it, as Seed-OSS, else ``attention_bias``).
        ``qk_norm_after_rope``: the per-head q / k norms apply to the rotated q and k
        (HunYuan), not before RoPE. ``sinks``: learned attention sinks per head (gpt-oss)."""
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = attention_shape(config)
        model_type = getattr(config, "model_type", "llama")
        if qkv_bias is None:
            qkv_bias = getattr(config, "attention_bias", False) or model_type == "qwen2"
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads, qkv_bias,
                                          quant_config=quant_config, prefix=f"{prefix}.qkv_proj")
        # This tensor-parallel rank's widths of q and of k / v.
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        if o_bias is None:
            o_bias = getattr(config, "attention_out_bias", None)
            o_bias = getattr(config, "attention_bias", False) if o_bias is None else o_bias
        self.o_proj = RowParallelLinear(self.num_heads * self.head_dim, config.hidden_size, bool(o_bias),
                                        quant_config=quant_config, prefix=f"{prefix}.o_proj")
        self.use_qk_norm = model_type == "qwen3" if qk_norm is None else qk_norm
        if self.use_qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.rotary_emb = rotary_emb
        self.qk_norm_after_rope = qk_norm_after_rope
        self.attn = Attention(self.num_heads, self.head_dim, self.num_kv_heads, attention_scale(config, self.head_dim),
                              layer_sliding_window(config, layer), sinks=sinks)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        rotary_emb = self.rotary_emb
        if self.use_qk_norm:
            if self.qk_norm_after_rope and rotary_emb is not None:
                q, k = rotary_emb(positions, q.contiguous(), k.contiguous())
                rotary_emb = None
            num_tokens = q.shape[0]
            q = self.q_norm(q.reshape(-1, self.head_dim)).view(num_tokens, self.q_size)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view(num_tokens, self.kv_size)
        return self.o_proj(self.attn(q, k, v, positions, rotary_emb))  # RoPE with the cache write


def input_codes_dtype(layer: nn.Module | None) -> torch.dtype | None:
    """The 8-bit type ``layer`` takes its input quantized in (``ActivationCodes``), or None
    (float input: unquantized, weight-only, static scales, a LoRA wrapper, no such layer)."""
    fn = getattr(layer, "input_codes_dtype", None)
    return fn() if fn is not None else None


def codes_for(norm: nn.Module, layer: nn.Module | None) -> torch.dtype | None:
    """The 8-bit type ``norm`` emits for ``layer`` (``input_codes_dtype``), or None: float output,
    where the layer takes float input or the norm cannot quantize (a LayerNorm: the layer then
    quantizes its own input)."""
    return input_codes_dtype(layer) if getattr(norm, "emits_codes", False) else None


def _codes_kw(codes: torch.dtype | None) -> dict:
    # Only when fusing: a norm may be nn.Identity (EAGLE's first layer).
    return {} if codes is None else {"codes_dtype": codes}


def gated_activation(act: str) -> nn.Module:
    """SiLU (SwiGLU) or a GELU variant (GeGLU, Gemma's gelu_pytorch_tanh); others are refused."""
    if act == "silu":
        return SiluAndMul()
    try:
        return GeluAndMul(gelu_approximation(act))
    except ValueError:
        raise ValueError(f"hidden_act {act!r} is not supported (silu or a GELU variant)") from None


class LlamaMLP(nn.Module):
    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2, bias,
                                                       quant_config=quant_config, prefix=f"{prefix}.gate_up_proj")
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")
        self.act_fn = gated_activation(getattr(config, "hidden_act", "silu"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # down_proj quantizes its own input: a gate that emits codes runs on one program per
        # row, 6.5 us against 1.5 + 2.3 us for the two launches at batch 1 (H200).
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class UngatedMLP(nn.Module):
    """up_proj -> activation -> down_proj, no gate (Nemotron, Arcee: relu2; Apertus: xIELU)."""

    def __init__(self, config: Any, quant_config: QuantizationConfig | None = None, prefix: str = "") -> None:
        super().__init__()
        bias = bool(getattr(config, "mlp_bias", False))
        self.up_proj = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias,
                                            quant_config=quant_config, prefix=f"{prefix}.up_proj")
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias,
                                           quant_config=quant_config, prefix=f"{prefix}.down_proj")
        self.act_fn = plain_activation(getattr(config, "hidden_act", "relu2"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(x)))


class PreNormDecoderLayer(nn.Module):
    """Pre-norm attention then the feed-forward block, the residual adds fused into the norms.
    ``ffn_name`` is the block's checkpoint name (``mlp``, Mixtral's ``block_sparse_moe``).
    Granite's ``residual_multiplier`` scales both blocks' outputs before their residual add."""

    def __init__(self, config: Any, self_attn: nn.Module, ffn: nn.Module, ffn_name: str = "mlp",
                 norm_unit_offset: bool = False, make_norm: Callable[[], nn.Module] | None = None) -> None:
        """``norm_unit_offset``: Gemma's norms, which multiply by (1 + weight). ``make_norm``:
        builds each of the two norms instead of an RMSNorm (Nemotron's LayerNorms); it must
        take the same (x, residual) arguments."""
        super().__init__()
        self.self_attn = self_attn
        self.ffn_name = ffn_name
        self.add_module(ffn_name, ffn)
        if make_norm is None:
            def make_norm() -> nn.Module:
                return RMSNorm(config.hidden_size, config.rms_norm_eps, norm_unit_offset)
        self.input_layernorm = make_norm()
        self.post_attention_layernorm = make_norm()
        self.residual_multiplier = float(getattr(config, "residual_multiplier", 1.0))

    def forward(
        self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # An 8-bit qkv_proj / gate_up_proj with per-token activations: the norm quantizes for it.
        attn_codes = codes_for(self.input_layernorm, getattr(self.self_attn, "qkv_proj", None))
        ffn = getattr(self, self.ffn_name)
        ffn_codes = codes_for(self.post_attention_layernorm, getattr(ffn, "gate_up_proj", None))
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states, **_codes_kw(attn_codes))
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual, **_codes_kw(attn_codes))
        hidden_states = self._scale_residual(self.self_attn(positions, hidden_states))
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual, **_codes_kw(ffn_codes))
        return self._scale_residual(self.feed_forward(ffn, hidden_states)), residual

    def feed_forward(self, ffn: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """The feed-forward block's output; a subclass adds its layer-level parts (GraniteMoe-
        Shared's shared MLP beside the experts)."""
        return ffn(hidden_states)

    def _scale_residual(self, block_output: torch.Tensor) -> torch.Tensor:
        # The next norm adds its input to the residual, so scaling here is residual + m * block.
        return block_output if self.residual_multiplier == 1.0 else block_output * self.residual_multiplier


class LlamaDecoderLayer(PreNormDecoderLayer):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding | None,
                 quant_config: QuantizationConfig | None = None, prefix: str = "", layer: int | None = None) -> None:
        super().__init__(config, LlamaAttention(config, rotary_emb, quant_config=quant_config,
                                                prefix=f"{prefix}.self_attn", layer=layer),
                         LlamaMLP(config, quant_config, f"{prefix}.mlp"))


class LlamaModel(nn.Module):
    layer_cls: type[nn.Module] = LlamaDecoderLayer  # (config, rotary_emb, quant_config, prefix, layer)
    norm_unit_offset = False  # the final norm multiplies by (1 + weight) (Gemma)
    rope_is_neox_style = True  # False: RoPE rotates adjacent pairs (GPT-J style)

    def __init__(self, config: Any, max_position: int, quant_config: QuantizationConfig | None = None,
                 prefix: str = "model") -> None:
        super().__init__()
        # Pipeline stages hold the embedding (first), their layers, and the norm (last).
        self.embed_tokens = (VocabParallelEmbedding(config.vocab_size, config.hidden_size) if is_first_pp_rank()
                             else PPMissingLayer())
        # One cos/sin table for all layers (one per layer type where RoPE differs by type), sized
        # for the longest sequence the engine allows.
        rotary_emb = self.make_rotary_embedding(config, max_position)
        self.start_layer, self.end_layer, self.layers = make_layers(
            config.num_hidden_layers,
            lambda i: self.layer_cls(config, self.layer_rotary(config, i, rotary_emb), quant_config,
                                     f"{prefix}.layers.{i}", i))
        self.norm = self.make_norm(config) if is_last_pp_rank() else PPMissingLayer()
        self.embedding_multiplier = float(getattr(config, "embedding_multiplier", 1.0))  # Granite

    def make_rotary_embedding(self, config: Any, max_position: int
                              ) -> RotaryEmbedding | dict[str, RotaryEmbedding]:
        """RoPE on the first ``partial_rotary_factor`` of each head (default all of it), halves
        rotated (neox style) or, with ``rope_is_neox_style`` False, adjacent pairs (Helium);
        subclasses change it (GLM's partial GPT-J-style rotary). ``rope_parameters`` keyed by
        layer type (OLMo 3: its own base / scaling for sliding and full layers) gives one
        RoPE per layer type."""
        by_type = rope_parameters_by_layer_type(config)
        if by_type is not None:
            return {layer_type: self._rotary(config, max_position, params)
                    for layer_type, params in by_type.items()}
        return self._rotary(config, max_position, None)

    def _rotary(self, config: Any, max_position: int, type_params: dict[str, Any] | None) -> RotaryEmbedding:
        """One RoPE from the config's settings, or from one layer type's ``type_params``."""
        _, _, head_dim = attention_shape(config)
        if type_params is None:
            base, rope_type, params, original_max = rope_settings(config)
        else:
            params = dict(type_params)
            base = float(params.get("rope_theta", 10000.0))
            rope_type = params.get("rope_type", params.get("type", "default"))
            original_max = int(params.get("original_max_position_embeddings", config.max_position_embeddings))
        factor = float(params.get("partial_rotary_factor") or 1.0)
        rotary_dim = None if factor == 1.0 else int(head_dim * factor)
        return RotaryEmbedding(head_dim, max_position, base, rope_type, params, original_max,
                               config.max_position_embeddings, rotary_dim=rotary_dim,
                               is_neox_style=self.rope_is_neox_style)

    def layer_rotary(self, config: Any, layer: int, rotary_emb: RotaryEmbedding | dict[str, RotaryEmbedding]
                     ) -> RotaryEmbedding | None:
        """Layer ``layer``'s RoPE (its layer type's, where RoPE differs by type); None: a NoPE
        layer (SmolLM3's ``no_rope_layers``)."""
        if not layer_uses_rope(config, layer):
            return None
        return rotary_emb[config.layer_types[layer]] if isinstance(rotary_emb, dict) else rotary_emb

    def make_norm(self, config: Any) -> nn.Module:
        """The final norm (RMSNorm; a subclass may use a LayerNorm)."""
        return RMSNorm(config.hidden_size, config.rms_norm_eps, self.norm_unit_offset)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The embedding table's rows (before any embedding multiplier): what a prompt given as
        embeddings (``inputs_embeds``) stands in for."""
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is None:
            hidden_states = self.embed_input_ids(input_ids) if inputs_embeds is None else inputs_embeds
            residual = None
            if self.embedding_multiplier != 1.0:
                hidden_states = hidden_states * self.embedding_multiplier
        else:
            hidden_states, residual = intermediate_tensors.hidden_states, intermediate_tensors.residual
        for layer in self.layers[self.start_layer:self.end_layer]:
            hidden_states, residual = layer(positions, hidden_states, residual)
        if not is_last_pp_rank():
            return IntermediateTensors(hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(nn.Module):
    model_cls: type[LlamaModel] = LlamaModel
    supports_pp = True  # forward takes / returns IntermediateTensors between pipeline stages
    supports_quantization = True  # linear layers take quant_config (the LM head stays unquantized)
    supports_lora = True  # PEFT adapters on q/k/v/o and gate/up/down (pagedlm.lora)
    # checkpoint name fragment -> (our fused parameter fragment, shard id)
    stacked_params_mapping = [
        (".q_proj", ".qkv_proj", "q"),
        (".k_proj", ".qkv_proj", "k"),
        (".v_proj", ".qkv_proj", "v"),
        (".gate_proj", ".gate_up_proj", 0),
        (".up_proj", ".gate_up_proj", 1),
    ]
    # checkpoint name fragment -> ours, applied before the fused mapping (Apertus's
    # attention_layernorm is our input_layernorm)
    checkpoint_renames: list[tuple[str, str]] = []

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        super().__init__()
        self.config = config
        max_position = max_position or config.max_position_embeddings
        self.model = self.model_cls(config, max_position, quant_config)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size) if is_last_pp_rank() else PPMissingLayer()
        # With pipeline stages the tied weight lives on two ranks: the last stage loads its
        # copy from the embedding's checkpoint tensor (see load_weights).
        if self.tie_word_embeddings and is_first_pp_rank() and is_last_pp_rank():
            self.lm_head.weight = self.model.embed_tokens.weight
        self.logits_scaling = float(getattr(config, "logits_scaling", 1.0))  # Granite divides its logits

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_input_ids(input_ids)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None,
                inputs_embeds: torch.Tensor | None = None) -> torch.Tensor | IntermediateTensors:
        """``inputs_embeds`` [T, hidden]: used in place of the embedding lookup of ``input_ids``
        (prompts given as embeddings)."""
        if inputs_embeds is None:
            return self.model(input_ids, positions, intermediate_tensors)
        return self.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head.compute_logits(hidden_states)
        return logits if self.logits_scaling == 1.0 else logits / self.logits_scaling

    def attention_layers(self) -> list[Attention]:
        return [layer.self_attn.attn for layer in self.model.layers[self.model.start_layer:self.model.end_layer]]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load (name, tensor) pairs from a checkpoint; returns the names of loaded params."""
        params = dict(self.named_parameters(remove_duplicate=False))
        skipped = missing_prefixes(self)
        loaded: set[str] = set()
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            for ckpt_part, ours in self.checkpoint_renames:
                name = name.replace(ckpt_part, ours)
            if self.tie_word_embeddings and name.startswith("lm_head."):
                continue
            if self.tie_word_embeddings and name == "model.embed_tokens.weight" and "lm_head.weight" in params:
                params["lm_head.weight"].weight_loader(params["lm_head.weight"], tensor, None)
                loaded.add("lm_head.weight")
            if is_pp_missing(name, skipped):
                continue
            target, shard_id = name, None
            for ckpt_part, fused_part, sid in self.stacked_params_mapping:
                if ckpt_part in name:
                    target, shard_id = name.replace(ckpt_part, fused_part), sid
                    break
            param = params.get(target)
            if param is None:
                raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in {type(self).__name__}")
            param.weight_loader(param, tensor, shard_id)
            loaded.add(target)
        return loaded
