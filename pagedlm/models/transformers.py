"""vLLM's Transformers modeling backend (``model_impl="transformers"``): the Hugging Face
model class itself runs the forward, with pagedlm's paged attention plugged in through
transformers' attention interface.

How (as vLLM does it): the step's tokens go in as one "batch of 1, sequence of T tokens"
with their positions passed explicitly (``position_ids``); the model's attention modules call
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``, and the implementation registered
here as ``"pagedlm"`` ignores the mask (transformers builds none for an implementation it has
no mask function for) and hands the layer's already-rotated q / k / v to a pagedlm
``Attention`` (``module.layer_idx`` picks it), which writes K / V into the paged cache and
attends through the step's metadata (``pagedlm.forward_context``), so the sequences of a
batch never see one another. The LM head is the model's own, run on the rows the runner picks.

Used for ``model_impl="transformers"``, and by ``"auto"`` for an architecture pagedlm has no
native class for whose transformers class supports the attention interface
(``_supports_attention_backend``); see ``pagedlm.models.registry``.

Quantized checkpoints: with a quantization config every ``nn.Linear`` of the model but its LM
head is replaced by a pagedlm ``ReplicatedLinear`` of the format's method, named as the module
(so ignore lists and the checkpoint's tensor names match), loaded through the method's loaders
and run by its kernels; the norms hand over float activations (an 8-bit layer quantizes its own).

Limits: one rank (no tensor / pipeline parallelism), no LoRA, decoder layers that are all
softmax attention (``full_attention`` / ``sliding_attention``; hybrid
models with recurrent or linear-attention layers keep state this backend has no cache for),
K and V of one head size, no attention sinks. The decode steps run eagerly (no CUDA graphs).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from pagedlm.config import ConfigError, attention_shape, layer_sliding_window
from pagedlm.forward_context import set_forward_context
from pagedlm.layers.attention import Attention
from pagedlm.layers.quantization import QuantizationConfig

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "pagedlm"
# Layer types whose layers are plain softmax attention over the sequence (or its window).
ATTENTION_LAYER_TYPES = frozenset({"full_attention", "sliding_attention"})

# The model whose forward is running (set by TransformersForCausalLM.forward): its attention
# layers, which the registered attention function looks up by the HF module's layer_idx.
_active: list["TransformersForCausalLM"] = []


# A checkpoint tensor of one expert (Mixtral's block_sparse_moe.experts.3.w1, Qwen's mlp.experts.3.gate_proj).
_PER_EXPERT = re.compile(r"\.experts\.\d+\.")


def _causal_lm_names() -> set[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return names


def hf_model_class(architecture: str) -> type | None:
    """transformers' class for ``architecture`` when it can run on this backend: a causal LM
    class (AutoModelForCausalLM's) that supports the attention interface; else None."""
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    if architecture not in _causal_lm_names():
        return None
    try:
        cls = getattr(transformers, architecture, None)
    except Exception:  # lazy import of a model whose optional dependency is missing
        return None
    if not isinstance(cls, type) or not getattr(cls, "_supports_attention_backend", False):
        return None
    return cls


def supports_transformers_backend(architecture: str) -> bool:
    return hf_model_class(architecture) is not None


def pagedlm_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              attention_mask: Any, scaling: float | None = None, dropout: float = 0.0,
                              **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [1, Hq, T, D], key / value
    [1, Hkv, T, D] (RoPE applied) -> ([1, T, Hq, D], no attention weights). The mask is
    ignored: the step's attention metadata says what each token attends to."""
    if not _active:
        raise RuntimeError("the 'pagedlm' attention implementation runs only inside pagedlm's "
                           "TransformersForCausalLM forward")
    model = _active[-1]
    layer_idx = getattr(module, "layer_idx", None)
    if layer_idx is None or not 0 <= layer_idx < len(model.attn_layers):
        raise RuntimeError(f"{type(module).__name__} has no usable layer_idx ({layer_idx!r}); the transformers "
                           "backend needs one per decoder layer")
    if kwargs.get("s_aux") is not None or kwargs.get("sinks") is not None:
        raise NotImplementedError("attention sinks are not supported by pagedlm's transformers backend")
    attn: Attention = model.attn_layers[layer_idx]
    model.attention_calls.append(layer_idx)
    _, num_heads, num_tokens, head_dim = query.shape
    if (num_heads, head_dim) != (attn.num_heads, attn.head_dim) or key.shape[1] != attn.num_kv_heads \
            or key.shape[-1] != head_dim or value.shape[-1] != head_dim:
        raise RuntimeError(f"layer {layer_idx}: q {tuple(query.shape)}, k {tuple(key.shape)}, v {tuple(value.shape)} "
                           f"do not match the config's attention shape ({attn.num_heads} heads, {attn.num_kv_heads} "
                           f"KV heads, head size {attn.head_dim})")
    # The module's own settings win over the config's (they are what transformers would use).
    if scaling is not None:
        attn.scale = float(scaling)
    if "sliding_window" in kwargs:
        window = kwargs["sliding_window"]
        attn.sliding_window = int(window) if window else None
    if "softcap" in kwargs:
        attn.softcap = float(kwargs["softcap"]) if kwargs["softcap"] else None
    q, k, v = (x[0].transpose(0, 1).reshape(num_tokens, -1) for x in (query, key, value))
    out = attn(q, k, v)  # cache write + paged attention over each sequence's context
    return out.view(1, num_tokens, num_heads, head_dim), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, pagedlm_attention_forward)


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if get is not None else config


def check_layer_types(config: Any, architecture: str) -> None:
    """Refuse hybrid models: a layer that is not softmax attention keeps state (a recurrent or
    linear-attention layer) that the paged KV cache does not hold."""
    layer_types = getattr(_text_config(config), "layer_types", None) or []
    others = sorted({str(t) for t in layer_types} - ATTENTION_LAYER_TYPES)
    if others:
        raise ConfigError(f"{architecture} has layers of type {others}: pagedlm's transformers backend runs models "
                          f"whose layers are all {sorted(ATTENTION_LAYER_TYPES)}")


@contextlib.contextmanager
def _active_model(model: "TransformersForCausalLM") -> Iterator[None]:
    _active.append(model)
    try:
        yield
    finally:
        _active.pop()


class TransformersForCausalLM(nn.Module):
    """A transformers ``*ForCausalLM`` behind pagedlm's model interface: forward(input_ids [T],
    positions [T]) -> hidden states [T, H]; compute_logits(hidden) -> [S, V];
    attention_layers() -> the paged attention layers the runner gives KV caches;
    load_weights(checkpoint pairs)."""

    supports_pp = False
    supports_quantization = True  # its nn.Linear layers replaced by the format's (see the module docstring)
    supports_lora = False
    supports_cuda_graphs = False  # decode steps run eagerly (see the module docstring)
    is_transformers_backend = True

    def __init__(self, config: Any, max_position: int | None = None, architecture: str | None = None,
                 quant_config: QuantizationConfig | None = None) -> None:
        super().__init__()
        _register()
        architectures = list(getattr(config, "architectures", None) or [])
        architecture = architecture or next((a for a in architectures if hf_model_class(a)), None)
        hf_cls = hf_model_class(architecture) if architecture else None
        if hf_cls is None:
            raise ConfigError(f"Model architectures {architectures} have no transformers causal-LM class that "
                              "supports the attention interface (_supports_attention_backend)")
        check_layer_types(config, architecture)
        from transformers.initialization import no_init_weights

        config = copy.deepcopy(config)  # transformers records dtype / attention implementation on it
        self.config = config
        self.architecture = architecture
        # Parameters are created uninitialised on the current device (load_model's) in the current
        # default dtype (the engine's); buffers computed in __init__ (RoPE's inv_freq) stay valid.
        dtype = torch.get_default_dtype()
        with no_init_weights():
            self.hf_model = hf_cls._from_config(config, attn_implementation=ATTN_IMPLEMENTATION, dtype=dtype)
        logger.info("%s runs on the transformers backend: transformers' %s with pagedlm's paged attention",
                    architecture, hf_cls.__name__)
        self.hf_model.tie_weights()  # (skipped with the weight init) a tied LM head shares the embedding
        if quant_config is not None:
            self._quantize_linears(quant_config)
        self.hf_model.eval()
        # Keep the engine's config the one the model holds (from_config records its dtype on it).
        text_config = _text_config(self.hf_model.config)
        num_heads, num_kv_heads, head_dim = attention_shape(text_config)
        scale = head_dim**-0.5  # replaced by each module's own ``scaling`` at its first call
        self.attn_layers = nn.ModuleList(
            Attention(num_heads, head_dim, num_kv_heads, scale, layer_sliding_window(text_config, i),
                      getattr(text_config, "attn_logit_softcapping", None))
            for i in range(text_config.num_hidden_layers))
        self.attention_calls: list[int] = []
        self.final_logit_softcapping = getattr(text_config, "final_logit_softcapping", None)
        self.logit_scale = float(getattr(text_config, "logit_scale", None) or 1.0)  # Cohere multiplies
        self.logits_scaling = float(getattr(text_config, "logits_scaling", None) or 1.0)  # Granite divides
        self._checked = False

    def _quantize_linears(self, quant_config: QuantizationConfig) -> None:
        """Every ``nn.Linear`` but the LM head becomes a ``ReplicatedLinear`` of the format's
        method (unquantized where the config leaves the layer out), under the module's name."""
        from pagedlm.layers.linear import ReplicatedLinear  # noqa: PLC0415 - linear imports quantization

        head = self.hf_model.get_output_embeddings()
        for parent_name, parent in list(self.hf_model.named_modules()):
            for child_name, child in list(parent.named_children()):
                if type(child) is not nn.Linear or child is head:
                    continue
                prefix = f"{parent_name}.{child_name}" if parent_name else child_name
                setattr(parent, child_name, ReplicatedLinear(child.in_features, child.out_features,
                                                             bias=child.bias is not None, quant_config=quant_config,
                                                             prefix=prefix))

    @property
    def decoder(self) -> nn.Module:
        return self.hf_model.base_model

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.attention_calls.clear()
        with _active_model(self):
            out = self.decoder(input_ids=input_ids.unsqueeze(0), position_ids=positions.unsqueeze(0),
                               use_cache=False, return_dict=True)
        if not self._checked:
            self._check_attention_calls()
        return out.last_hidden_state[0]

    def _check_attention_calls(self) -> None:
        """Each decoder layer must run its attention through the interface exactly once per
        forward; a layer that does not (recurrent layers, KV shared across layers) would
        silently compute something else."""
        expected = list(range(len(self.attn_layers)))
        if sorted(self.attention_calls) != expected:
            raise ConfigError(f"{self.architecture}: its layers called the attention interface for layers "
                              f"{sorted(self.attention_calls)}, not once for each of {len(expected)} layers; "
                              "pagedlm's transformers backend cannot run this model")
        self._checked = True

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.hf_model.get_output_embeddings()(hidden_states)
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.logits_scaling != 1.0:
            logits = logits / self.logits_scaling
        if self.final_logit_softcapping:
            cap = float(self.final_logit_softcapping)
            logits = torch.tanh(logits / cap) * cap
        return logits

    def attention_layers(self) -> list[Attention]:
        return list(self.attn_layers)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Checkpoint tensors by their transformers names into the model's parameters and
        persistent buffers; returns the loaded names as ``named_parameters()`` gives them
        (tied weights: loading either name fills both)."""
        targets: dict[str, torch.Tensor] = {}
        for name, tensor in self.hf_model.state_dict(keep_vars=True).items():
            targets[name] = tensor
        alias = {id(t): n for n, t in self.named_parameters()}  # deduplicated names
        loaded: set[str] = set()
        tied = bool(getattr(_text_config(self.config), "tie_word_embeddings", False))
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name:
                continue
            target = targets.get(name)
            if target is None:
                if tied and name.startswith("lm_head."):
                    continue
                if _PER_EXPERT.search(name):
                    raise ConfigError(
                        f"{self.architecture}: the checkpoint stores each expert's weights apart ({name!r}) and "
                        f"transformers' {type(self.hf_model).__name__} holds them fused; the transformers backend "
                        "loads tensors by name and does not convert them. Use pagedlm's own implementation "
                        "(--model-impl auto) where there is one")
                raise ValueError(f"checkpoint tensor {name!r} has no matching parameter or buffer in "
                                 f"{type(self.hf_model).__name__}")
            loader = getattr(target, "weight_loader", None)  # a pagedlm layer's parameter (quantized models)
            if loader is not None:
                with torch.no_grad():
                    loader(target, tensor)
                loaded.add(alias.get(id(target), f"hf_model.{name}"))
                continue
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, the model's "
                                 f"{tuple(target.shape)}")
            with torch.no_grad():
                target.data.copy_(tensor.to(dtype=target.dtype if target.is_floating_point() else tensor.dtype))
            loaded.add(alias.get(id(target), f"hf_model.{name}"))
        return loaded

    def check_runs(self, device: torch.device | str) -> None:
        """One two-token forward against a throwaway one-block cache, at load time: a model
        whose layers do not all attend through the interface is refused before serving."""
        from pagedlm.attention.metadata import AttentionMetadata

        device = torch.device(device)
        dtype = next(self.parameters()).dtype
        block = 2
        for attn in self.attn_layers:
            attn.kv_cache = torch.zeros(2, 1, block, attn.num_kv_heads, attn.head_dim, dtype=dtype, device=device)
        meta = AttentionMetadata(
            slot_mapping=torch.arange(block, device=device),
            query_start_loc=torch.tensor([0, block], dtype=torch.int32, device=device),
            seq_lens=torch.tensor([block], dtype=torch.int32, device=device),
            block_tables=torch.zeros(1, 1, dtype=torch.int32, device=device),
            max_query_len=block, max_seq_len=block, num_actual_tokens=block)
        try:
            with torch.inference_mode(), set_forward_context(meta):
                self(torch.zeros(block, dtype=torch.long, device=device), torch.arange(block, device=device))
        finally:
            for attn in self.attn_layers:
                attn.kv_cache = None


__all__ = ["TransformersForCausalLM", "pagedlm_attention_forward", "supports_transformers_backend",
           "hf_model_class"]
