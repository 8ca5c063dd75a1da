"""Weight loading shared by the model files: checkpoint names -> parameters, with fused
parameters (qkv_proj, gate_up_proj, stacked experts) filled part by part."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

# checkpoint name fragment -> (our fused parameter fragment, shard id)
LLAMA_STACKED_PARAMS: list[tuple[str, str, Any]] = [
    (".q_proj", ".qkv_proj", "q"),
    (".k_proj", ".qkv_proj", "k"),
    (".v_proj", ".qkv_proj", "v"),
    (".gate_proj", ".gate_up_proj", 0),
    (".up_proj", ".gate_up_proj", 1),
]


def load_params(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    stacked_params: Sequence[tuple[str, str, Any]] = (),
    skip_prefixes: Sequence[str] = (),
) -> set[str]:
    """Load (name, tensor) pairs; returns the names of the parameters loaded.

    A name containing a ``stacked_params`` fragment (first match wins) goes to the fused
    parameter named with that fragment replaced, with that shard id: ``.q_proj`` ->
    ``.qkv_proj`` shard "q"; ``experts.3.w1.`` -> ``experts.w13_`` shard (3, "w1")."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for name, tensor in weights:
        if "rotary_emb.inv_freq" in name or any(name.startswith(p) for p in skip_prefixes):
            continue
        target, shard_id = name, None
        for ckpt_part, fused_part, sid in stacked_params:
            if ckpt_part in name:
                target, shard_id = name.replace(ckpt_part, fused_part), sid
                break
        param = params.get(target)
        if param is None:
            raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in {type(model).__name__}")
        param.weight_loader(param, tensor, shard_id)
        loaded.add(target)
    return loaded


def load_shards(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor, Any]]) -> set[str]:
    """Load (parameter name, tensor, shard id) triples, the shard id passed to the parameter's
    loader (None: the whole tensor); returns the names loaded. For model files that split
    their checkpoint's fused tensors themselves (GPT-NeoX's per-head query_key_value)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded: set[str] = set()
    for name, tensor, shard_id in weights:
        param = params.get(name)
        if param is None:
            raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in {type(model).__name__}")
        param.weight_loader(param, tensor, shard_id)
        loaded.add(name)
    return loaded


def fused_parts(tensor: torch.Tensor, param: torch.Tensor | None, shards: Sequence[Any],
                cut: Callable[[torch.Tensor, int], Sequence[torch.Tensor]]) -> list[tuple[Any, torch.Tensor]]:
    """(shard id, piece) of a checkpoint tensor that holds several parts of a fused parameter.

    ``cut(rows, pack)`` splits a tensor whose dim 0 is the parameter's output dim, counted in
    units of ``pack`` outputs where the quantization format packs that dim (AWQ's qweight /
    qzeros, GPTQ's qzeros, block-wise fp8's scales; 1 elsewhere), into one piece per shard. A
    tensor with no output dim (GPTQ's g_idx) or one value per part (a per-tensor scale) goes
    whole to every shard. ``param`` None (a layer another rank holds): the output dim is dim 0."""
    dim = getattr(param, "output_dim", None) if param is not None else 0
    if dim is None or getattr(param, "shard_indexed", False):
        return [(shard, tensor) for shard in shards]
    pack = param.pack_factor if getattr(param, "packed_dim", None) == dim else 1
    pieces = cut(tensor.movedim(dim, 0), pack)
    return [(shard, piece.movedim(0, dim).contiguous()) for shard, piece in zip(shards, pieces, strict=True)]


def per_head_parts(rows: torch.Tensor, num_heads: int, parts: int, name: str) -> list[torch.Tensor]:
    """Rows laid out per head, [head 0: part 0 | part 1 | ..., head 1: ...], as one tensor of
    rows per part (GPT-NeoX's query_key_value, GPT-BigCode's c_attn without multi-query)."""
    if rows.shape[0] % (num_heads * parts):
        raise ValueError(f"{name}: {rows.shape[0]} rows (in packed units) are not {num_heads} heads of {parts} "
                         "whole parts")
    per_head = rows.reshape(num_heads, parts, -1, *rows.shape[1:])
    return [per_head[:, index].reshape(-1, *rows.shape[1:]) for index in range(parts)]
