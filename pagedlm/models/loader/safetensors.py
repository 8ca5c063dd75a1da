"""Weights from ``*.safetensors`` files (sharded through ``model.safetensors.index.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch

from pagedlm.config import ConfigError

SAFETENSORS_INDEX = "model.safetensors.index.json"


def has_safetensors(model_dir: str) -> bool:
    return any(Path(model_dir).glob("*.safetensors"))


def indexed_files(root: Path, index_name: str) -> list[Path] | None:
    """The weight files an index's weight_map names, or None when there is no index."""
    index = root / index_name
    if not index.exists():
        return None
    weight_map = json.loads(index.read_text())["weight_map"]
    files = [root / name for name in sorted(set(weight_map.values()))]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise ConfigError(f"checkpoint index {index_name} names files that are missing: {missing}")
    return files


def safetensors_files(model_dir: str) -> list[Path]:
    """The checkpoint's weight files: from model.safetensors.index.json when sharded."""
    root = Path(model_dir)
    files = indexed_files(root, SAFETENSORS_INDEX)
    if files is not None:
        return files
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"no *.safetensors weights found in {model_dir!r}")
    return files


def iterate_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
