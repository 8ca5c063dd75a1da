"""Weights from PyTorch ``pytorch_model*.bin`` files (sharded through ``pytorch_model.bin.index.json``).

They are pickles, so they are read with ``torch.load(weights_only=True)``: only tensors and
plain containers are unpickled, never arbitrary objects (a checkpoint cannot run code).
``mmap=True`` maps the file instead of reading it whole, so a shard costs no extra copy.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Iterator

import torch

from pagedlm.config import ConfigError
from pagedlm.models.loader.safetensors import indexed_files

BIN_INDEX = "pytorch_model.bin.index.json"


def has_bin(model_dir: str) -> bool:
    return any(Path(model_dir).glob("pytorch_model*.bin"))


def bin_files(model_dir: str) -> list[Path]:
    root = Path(model_dir)
    files = indexed_files(root, BIN_INDEX)
    if files is not None:
        return files
    files = sorted(root.glob("pytorch_model*.bin"))
    if not files:
        raise ConfigError(f"no pytorch_model*.bin weights found in {model_dir!r}")
    return files


def _load(path: Path) -> object:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
        # Files written before torch 1.6's zip format cannot be memory-mapped; read them whole.
        if "mmap" not in str(e):
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def iterate_bin(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        try:
            state = _load(path)
        except pickle.UnpicklingError as e:
            raise ConfigError(f"{path} is not a plain tensor checkpoint (torch.load with weights_only=True "
                              f"refused it; pagedlm never unpickles arbitrary objects): {e}") from e
        if not isinstance(state, dict):
            raise ConfigError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
        for name, tensor in state.items():
            if isinstance(tensor, torch.Tensor):
                yield name, tensor
        del state
