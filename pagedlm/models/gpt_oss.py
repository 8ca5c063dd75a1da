"""gpt-oss (``GptOssForCausalLM``, openai/gpt-oss-20b / -120b), after transformers'
modeling_gpt_oss.py:

* attention with biases on q / k / v / o and learned attention sinks (one logit per query
  head in each softmax's denominator, no value: ``Attention(sinks=True)``), sliding-window
  (``sliding_window``, 128) and full layers alternating as ``layer_types`` says; YaRN RoPE
  (neox-style halves);
* a MoE block in every layer: a router with a bias, top-k of the logits softmaxed over the
  chosen ones (= the full softmax renormalised over the top-k), experts with biases on both
  projections and the clamped SwiGLU ``(clamp(up, +-limit) + 1) * g * sigmoid(alpha * g)``
  with g = clamp(gate, max=limit) (FusedMoE ``activation="swigluoai"``);
* RMSNorms, an untied LM head.

Checkpoints: ``mlp.experts.gate_up_proj`` [E, H, 2I] holds the gate and up columns
interleaved (gate at even columns, up at odd; ``gate_up_proj_bias`` [E, 2I] likewise),
``down_proj`` [E, I, H]; both are transposed and the gate / up rows split while loading.
MXFP4 checkpoints (OpenAI's release, ``quant_method: mxfp4``) store the two projections as
``<name>_blocks`` / ``<name>_scales`` in [E, out, in] order; they are dequantized to the
model's dtype one expert at a time (``pagedlm.layers.quantization.mxfp4``).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from pagedlm.layers.fused_moe import FusedMoE
from pagedlm.layers.linear import ReplicatedLinear
from pagedlm.layers.quantization import QuantizationConfig, QuantizationError
from pagedlm.layers.quantization.mxfp4 import Mxfp4Config, dequantize_mxfp4
from pagedlm.layers.rotary import RotaryEmbedding
from pagedlm.models.llama import LlamaAttention
from pagedlm.models.mixtral import MoEDecoderLayer, MoEForCausalLM
from pagedlm.models.utils import LLAMA_STACKED_PARAMS, load_params


class GptOssAttention(LlamaAttention):
    def __init__(self, config: Any, rotary_emb: RotaryEmbedding, layer: int) -> None:
        bias = bool(getattr(config, "attention_bias", True))
        super().__init__(config, rotary_emb, qkv_bias=bias, qk_norm=False, layer=layer, o_bias=bias, sinks=True)


class GptOssMoE(nn.Module):
    def __init__(self, config: Any) -> None:
        super().__init__()
        self.router = ReplicatedLinear(config.hidden_size, config.num_local_experts, bias=True)
        self.experts = FusedMoE(config.num_local_experts, config.num_experts_per_tok, config.hidden_size,
                                config.intermediate_size, renormalize=True, has_bias=True, activation="swigluoai",
                                swiglu_alpha=float(getattr(config, "swiglu_alpha", 1.702)),
                                swiglu_limit=float(getattr(config, "swiglu_limit", 7.0)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.experts(hidden_states, self.router(hidden_states))


_EXPERT_PROJECTIONS = ("gate_up_proj", "down_proj")


class GptOssForCausalLM(MoEForCausalLM):
    # The only quantization is the checkpoint's own MXFP4 experts (dequantized while loading).
    supports_quantization = True

    def __init__(self, config: Any, max_position: int | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        if quant_config is not None and not isinstance(quant_config, Mxfp4Config):
            raise QuantizationError(f"GptOssForCausalLM runs bf16 / float checkpoints and OpenAI's MXFP4 ones, not "
                                    f"{quant_config.name}")
        super().__init__(config, max_position)

    @staticmethod
    def make_layer(config: Any, layer_idx: int, rotary_emb: RotaryEmbedding) -> nn.Module:
        return MoEDecoderLayer(config, GptOssAttention(config, rotary_emb, layer_idx), GptOssMoE(config), "mlp")

    def num_experts(self) -> int:
        return self.config.num_local_experts

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # MXFP4 halves waiting for their pair

        def others() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if ".mlp.experts." not in name:
                    yield name, tensor
                    continue
                module, leaf = name.rsplit(".", 1)
                if leaf.endswith(("_blocks", "_scales")):
                    proj, kind = leaf.rsplit("_", 1)
                    entry = pending.setdefault((module, proj), {})
                    entry[kind] = tensor
                    if len(entry) == 2:
                        del pending[(module, proj)]
                        loaded.add(_load_mxfp4_experts(params, module, proj, entry["blocks"], entry["scales"]))
                elif leaf in _EXPERT_PROJECTIONS:  # [E, in, out] -> each expert's [out, in]
                    loaded.add(_load_experts(params, module, leaf, (w.t() for w in tensor.unbind(0))))
                elif leaf.removesuffix("_bias") in _EXPERT_PROJECTIONS:
                    loaded.add(_load_experts(params, module, leaf.removesuffix("_bias"), tensor.unbind(0), bias=True))
                else:
                    raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in GptOssForCausalLM")

        mapping = [(".self_attn.sinks", ".self_attn.attn.sinks", None)] + LLAMA_STACKED_PARAMS
        loaded |= load_params(self, others(), mapping, ("lm_head.weight",) if self.tie_word_embeddings else ())
        if pending:
            raise ValueError(f"MXFP4 tensors without their blocks / scales pair: {sorted(pending)[:4]}")
        return loaded


def _load_experts(params: dict[str, nn.Parameter], module: str, proj: str, experts: Iterable[torch.Tensor],
                  bias: bool = False) -> str:
    """Each expert's [out, in] weight (or [out] bias) of ``proj`` into FusedMoE's stacked
    parameter; gate_up's rows alternate gate, up. -> the parameter's name."""
    name = f"{module}.{'w2' if proj == 'down_proj' else 'w13'}_{'bias' if bias else 'weight'}"
    param = params.get(name)
    if param is None:
        raise ValueError(f"checkpoint tensor {module}.{proj} has no matching parameter {name!r}")
    for e, w in enumerate(experts):
        if proj == "down_proj":
            param.weight_loader(param, w, (e, "w2"))
        else:
            param.weight_loader(param, w[0::2], (e, "w1"))
            param.weight_loader(param, w[1::2], (e, "w3"))
    return name


def _load_mxfp4_experts(params: dict[str, nn.Parameter], module: str, proj: str, blocks: torch.Tensor,
                        scales: torch.Tensor) -> str:
    """blocks [E, out, G, 16] / scales [E, out, G] dequantized one expert at a time (the peak
    is one expert's float32 weight, not the layer's) into the model's dtype."""
    name = f"{module}.{'w2' if proj == 'down_proj' else 'w13'}_weight"
    dtype = params[name].dtype if name in params else torch.float32
    experts = (dequantize_mxfp4(blocks[e], scales[e], dtype) for e in range(blocks.shape[0]))
    return _load_experts(params, module, proj, experts)


__all__ = ["GptOssForCausalLM"]
