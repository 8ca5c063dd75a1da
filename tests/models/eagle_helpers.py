"""Tiny EAGLE and EAGLE-3 heads for a tiny target, written in the checkpoint layouts vLLM
loads (shared by the CPU and GPU speculative-decoding tests)."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file


def _shapes(target: str) -> tuple[dict, int, int, int, int, int]:
    cfg = json.load(open(os.path.join(target, "config.json")))
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hidden = cfg["hidden_size"]
    return cfg, hidden, cfg["intermediate_size"], heads * (hidden // heads), kv_heads * (hidden // heads), cfg["vocab_size"]


def write_eagle(target: str, out: str) -> str:
    """An EAGLE head in SafeAILab's layout (fc, layers.0 without input_layernorm). fc passes
    the target's hidden state through and the layer adds nothing, so the head predicts the
    target's next token again: drafts repeat the newest token, which the echoing target
    sometimes accepts."""
    cfg, h, inter, q, kv, _ = _shapes(target)
    json.dump(dict(cfg, num_hidden_layers=1), open(os.path.join(out, "config.json"), "w"))
    gen = torch.Generator().manual_seed(3)
    rand = lambda *shape: 0.1 * torch.randn(*shape, generator=gen)  # noqa: E731
    weights = {"fc.weight": torch.cat([torch.zeros(h, h), torch.eye(h)], 1),
               "layers.0.self_attn.q_proj.weight": rand(q, h), "layers.0.self_attn.k_proj.weight": rand(kv, h),
               "layers.0.self_attn.v_proj.weight": rand(kv, h), "layers.0.self_attn.o_proj.weight": torch.zeros(h, q),
               "layers.0.mlp.gate_proj.weight": rand(inter, h), "layers.0.mlp.up_proj.weight": rand(inter, h),
               "layers.0.mlp.down_proj.weight": torch.zeros(h, inter),
               "layers.0.post_attention_layernorm.weight": torch.ones(h)}
    save_file(weights, os.path.join(out, "model.safetensors"))
    return out


def write_eagle3(target: str, out: str) -> str:
    """An EAGLE-3 head in vLLM's layout: midlayer.* (2H-wide q/k/v, hidden_norm), fc over three
    target layers, norm, its own lm_head over a 300-token draft vocabulary with d2t."""
    cfg, h, inter, q, kv, vocab = _shapes(target)
    draft_vocab = 300
    json.dump(dict(cfg, num_hidden_layers=1, draft_vocab_size=draft_vocab,
                   eagle_config={"eagle_aux_hidden_state_layer_ids": [0, 1, 1]}),
              open(os.path.join(out, "config.json"), "w"))
    gen = torch.Generator().manual_seed(4)
    rand = lambda *shape: 0.1 * torch.randn(*shape, generator=gen)  # noqa: E731
    kept = torch.randperm(vocab, generator=gen)[:draft_vocab].sort().values
    m = "midlayer."
    weights = {"fc.weight": rand(h, 3 * h), m + "self_attn.q_proj.weight": rand(q, 2 * h),
               m + "self_attn.k_proj.weight": rand(kv, 2 * h), m + "self_attn.v_proj.weight": rand(kv, 2 * h),
               m + "self_attn.o_proj.weight": rand(h, q), m + "mlp.gate_proj.weight": rand(inter, h),
               m + "mlp.up_proj.weight": rand(inter, h), m + "mlp.down_proj.weight": rand(h, inter),
               m + "input_layernorm.weight": torch.ones(h), m + "hidden_norm.weight": torch.ones(h),
               m + "post_attention_layernorm.weight": torch.ones(h), "norm.weight": torch.ones(h),
               "lm_head.weight": rand(draft_vocab, h), "d2t": kept - torch.arange(draft_vocab),
               "t2d": torch.zeros(vocab, dtype=torch.bool)}
    save_file(weights, os.path.join(out, "model.safetensors"))
    return out
