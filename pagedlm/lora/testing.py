"""Random PEFT-format LoRA adapters for tests and benchmarks, written without peft: the
same files peft's save_pretrained writes (adapter_config.json + adapter_model.safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from pagedlm.lora.peft import CONFIG_FILE, WEIGHTS_FILE, expected_shapes

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_random_adapter(out_dir: str | Path, hf_config: Any, rank: int = 16, alpha: float = 32.0,
                         targets: tuple[str, ...] = DEFAULT_TARGETS, seed: int = 0, std: float = 0.02,
                         dtype: torch.dtype = torch.bfloat16) -> str:
    """An adapter for every layer of ``hf_config`` with non-zero random A and B."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shapes = expected_shapes(hf_config)
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(hf_config.num_hidden_layers):
        for proj in targets:
            block = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out_dim, in_dim = shapes[proj]
            prefix = f"base_model.model.model.layers.{layer}.{block}.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, in_dim, generator=gen) * std).to(dtype)
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(out_dim, rank, generator=gen) * std).to(dtype)
    save_file(tensors, str(out / WEIGHTS_FILE))
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(targets),
              "bias": "none", "use_dora": False, "use_rslora": False, "modules_to_save": None,
              "fan_in_fan_out": False, "task_type": "CAUSAL_LM"}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return str(out)
